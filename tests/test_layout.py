"""Pathway layouts: shared separator ids, z_N by position, exact label masks, padding."""

from __future__ import annotations

import copy

import torch

from dartlm.data.example import Example
from dartlm.data.layout import (
    ANSWER,
    PAD_ROLE,
    PROMPT,
    REASONING,
    DartCollator,
    PromptFormat,
    segment_example,
)
from dartlm.model.adapters import ST_TOKEN, ensure_pad_token

from conftest import dart_features

FMT = PromptFormat()


def st_tokenizer(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.add_tokens([ST_TOKEN], special_tokens=True)
    return tok, tok.convert_tokens_to_ids(ST_TOKEN)


def test_separator_ids_identical_and_z_n_is_the_last_separator_token(any_tokenizer, example):
    tok, st_id = st_tokenizer(any_tokenizer)
    features = dart_features(example, tok, st_id, 5)
    sep = segment_example(example, tok, FMT).separator
    assert len(sep) >= 1
    for pathway in (features.cot, features.st):
        ids = pathway.input_ids
        assert ids[pathway.anchor - len(sep) + 1 : pathway.anchor + 1] == sep
        # The token after z_N is the first answer token.
        assert pathway.roles[pathway.anchor + 1] == ANSWER
        assert pathway.roles[pathway.anchor] != ANSWER
    # The decoded separator is the configured text.
    assert tok.decode(sep).strip() == FMT.separator


def test_label_masks_cover_exactly_the_intended_tokens(any_tokenizer, example):
    tok, st_id = st_tokenizer(any_tokenizer)
    seg = segment_example(example, tok, FMT)
    features = dart_features(example, tok, st_id, 4)
    n_prompt = len(seg.prefix) + len(seg.question)
    cot, st = features.cot, features.st

    # CoT pathway: question unsupervised; CoT + separator are reasoning; answer + eos are answer.
    assert cot.roles == (PROMPT,) * n_prompt + (REASONING,) * (len(seg.cot) + len(seg.separator)) + (ANSWER,) * len(seg.answer)
    assert cot.input_ids == seg.prefix + seg.question + seg.cot + seg.separator + seg.answer
    # ST pathway: question, <st> and separator unsupervised; only the answer (with eos) is.
    assert st.roles == (PROMPT,) * (n_prompt + 4 + len(seg.separator)) + (ANSWER,) * len(seg.answer)
    assert st.input_ids == seg.prefix + seg.question + (st_id,) * 4 + seg.separator + seg.answer
    assert seg.answer[-1] == tok.eos_token_id
    assert tok.decode(seg.answer[:-1]).strip() == "56"
    assert tok.decode(seg.cot).strip().replace(" ", "") == "<<40-9=31>><<31+25=56>>"


def test_omitting_the_last_step_shortens_only_the_cot(tokenizer, example):
    tok, st_id = st_tokenizer(tokenizer)
    full = dart_features(example, tok, st_id, 3)
    short = dart_features(example.without_last_step(), tok, st_id, 3)
    assert short.st == full.st
    assert len(short.cot) < len(full.cot)
    assert "31+25" not in tok.decode(short.cot.input_ids)


def test_no_thought_tokens_and_empty_cot_still_have_an_anchor(tokenizer):
    tok, st_id = st_tokenizer(tokenizer)
    features = dart_features(Example("How many?", (), "3"), tok, st_id, 0)
    sep = segment_example(Example("How many?", (), "3"), tok, FMT).separator
    for pathway in (features.cot, features.st):
        assert pathway.input_ids[pathway.anchor] == sep[-1]
    assert features.cot.input_ids == features.st.input_ids


def test_collator_pads_right_and_keeps_anchors(tokenizer, example):
    tok, st_id = st_tokenizer(tokenizer)
    ensure_pad_token(tok)
    short = Example("How many?", ("<<1+2=3>>",), "3")
    features = [dart_features(e, tok, st_id, 2) for e in (example, short)]
    batch = DartCollator(tok.pad_token_id)(features)
    for name, pathway_of in (("cot", lambda f: f.cot), ("st", lambda f: f.st)):
        b = batch[name]
        width = max(len(pathway_of(f)) for f in features)
        assert b["input_ids"].shape == b["attention_mask"].shape == b["roles"].shape == (2, width)
        for row, f in enumerate(features):
            p = pathway_of(f)
            assert b["input_ids"][row, : len(p)].tolist() == list(p.input_ids)
            assert b["attention_mask"][row].sum().item() == len(p)
            assert (b["roles"][row, len(p) :] == PAD_ROLE).all()
            assert b["anchor"][row].item() == p.anchor
    assert batch["st"]["input_ids"].dtype == torch.long


def test_bos_is_prepended_only_when_the_tokenizer_uses_one(tokenizer):
    # The byte-level test tokenizer has a bos token but does not add it by itself (like GPT-2).
    seg = segment_example(Example("q", (), "1"), tokenizer, FMT)
    assert seg.prefix == ()
