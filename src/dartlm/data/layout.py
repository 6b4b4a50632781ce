"""Token layouts of the two DART pathways (and of the baselines, which are variants of them).

Every sequence is the concatenation of separately tokenised segments (spec section 1):

    CoT pathway:  [bos] Q  CoT  SEP  Y eos        CE on CoT + SEP (reasoning) and on Y + eos (answer)
    ST pathway:   [bos] Q  <st>*C  SEP  Y eos     CE on Y + eos only

Tokenising segments separately makes the separator ids identical in both pathways and lets us find z_N (the
last separator token) by position instead of by string search, which lands one token off on some tokenizers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from dartlm.data.example import Example

# Per-token roles. Losses are masks over these, so a test can check exactly which tokens are supervised.
PROMPT, REASONING, ANSWER = 0, 1, 2
PAD_ROLE = -1


@dataclass(frozen=True)
class PromptFormat:
    """The texts that glue the segments together.

    `separator` is z_t..z_N, shared by every pathway. `joiner` precedes every segment after the question so that
    it is tokenised as running text (" Answer:" rather than "Answer:" at the start of a document).
    """

    separator: str = "Answer:"
    joiner: str = " "


@dataclass(frozen=True)
class Pathway:
    """One tokenised sequence: ids, the role of each token, and the index of z_N (the last separator token)."""

    input_ids: tuple[int, ...]
    roles: tuple[int, ...]
    anchor: int

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class Segments:
    """The separately tokenised pieces of one example."""

    prefix: tuple[int, ...]  # bos, if the tokenizer uses one
    question: tuple[int, ...]
    cot: tuple[int, ...]
    separator: tuple[int, ...]
    answer: tuple[int, ...]  # answer tokens followed by eos


def _encode(tokenizer, text: str) -> tuple[int, ...]:
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else ()


def bos_prefix(tokenizer) -> tuple[int, ...]:
    """[bos] when the tokenizer puts one in front of a plain encoding (Llama-3 does, GPT-2 does not)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return ()
    ids = tokenizer("a")["input_ids"]
    return (bos,) if ids and ids[0] == bos else ()


def segment_example(example: Example, tokenizer, fmt: PromptFormat) -> Segments:
    """Tokenise each part of the example on its own."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token; the answer needs one so that generation stops")
    cot = example.cot
    return Segments(
        prefix=bos_prefix(tokenizer),
        question=_encode(tokenizer, example.question),
        cot=_encode(tokenizer, fmt.joiner + cot) if cot else (),
        separator=separator_ids(tokenizer, fmt),
        answer=_encode(tokenizer, fmt.joiner + example.answer) + (tokenizer.eos_token_id,),
    )


def step_ids(example: Example, tokenizer, fmt: PromptFormat) -> tuple[tuple[int, ...], ...]:
    """Each CoT step tokenised on its own (joiner + step), for curricula that drop whole steps (Coconut)."""
    return tuple(_encode(tokenizer, fmt.joiner + step) for step in example.steps)


def separator_ids(tokenizer, fmt: PromptFormat) -> tuple[int, ...]:
    ids = _encode(tokenizer, fmt.joiner + fmt.separator)
    if not ids:
        raise ValueError("the answer separator must not be empty: z_N is its last token")
    return ids


def build_pathway(seg: Segments, thought_ids: Sequence[int] | None, *, with_answer: bool = True) -> Pathway:
    """Lay out one sequence.

    thought_ids=None gives the CoT pathway (the CoT and separator are supervised); a list of ids (C copies of
    `<st>` or `<pause>`, or none for No-CoT) gives a pathway where only the answer is supervised.
    with_answer=False stops after the separator: the inference prompt.
    """
    if thought_ids is None:
        middle, middle_role, sep_role = seg.cot, REASONING, REASONING
    else:
        middle, middle_role, sep_role = tuple(thought_ids), PROMPT, PROMPT
    parts = [
        (seg.prefix, PROMPT),
        (seg.question, PROMPT),
        (middle, middle_role),
        (seg.separator, sep_role),
    ]
    if with_answer:
        parts.append((seg.answer, ANSWER))
    ids: list[int] = []
    roles: list[int] = []
    for tokens, role in parts:
        ids.extend(tokens)
        roles.extend([role] * len(tokens))
    anchor = len(seg.prefix) + len(seg.question) + len(middle) + len(seg.separator) - 1
    return Pathway(tuple(ids), tuple(roles), anchor)


@dataclass(frozen=True)
class DartFeatures:
    """The teacher (CoT) and student (ST) sequences of one example."""

    cot: Pathway
    st: Pathway
    origin: str = ""


def pad_pathways(pathways: Sequence[Pathway], pad_id: int, *, left: bool = False) -> dict[str, torch.Tensor]:
    """Pad a batch of pathways to one length.

    Returns input_ids (B, T), attention_mask (B, T), roles (B, T; PAD_ROLE on padding) and anchor (B,), the
    index of z_N in the padded rows. Training pads on the right; generation pads on the left.
    """
    width = max(len(p) for p in pathways)
    ids = torch.full((len(pathways), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pathways), width), dtype=torch.long)
    roles = torch.full((len(pathways), width), PAD_ROLE, dtype=torch.long)
    anchor = torch.empty(len(pathways), dtype=torch.long)
    for row, p in enumerate(pathways):
        start = width - len(p) if left else 0
        ids[row, start : start + len(p)] = torch.tensor(p.input_ids)
        mask[row, start : start + len(p)] = 1
        roles[row, start : start + len(p)] = torch.tensor(p.roles)
        anchor[row] = start + p.anchor
    return {"input_ids": ids, "attention_mask": mask, "roles": roles, "anchor": anchor}


class DartCollator:
    """Pads a batch of DartFeatures into {"cot": {...}, "st": {...}} tensors (right padding)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: Sequence[DartFeatures]) -> dict[str, dict[str, torch.Tensor]]:
        return {
            "cot": pad_pathways([f.cot for f in features], self.pad_token_id),
            "st": pad_pathways([f.st for f in features], self.pad_token_id),
        }
