"""Merge-and-export: the check before writing, a stock-loadable folder, and generation from it."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import FAMILIES, dart_features, make_model
from test_dart_objective import EXAMPLES
from test_rem import randomise_trainable
from dartlm.data.layout import DartCollator
from dartlm.generate import generate_answers, load_exported, prompt_ids
from dartlm.model import export as export_module
from dartlm.model.adapters import ST_TOKEN, LoraSettings, add_special_token, attach_adapters, ensure_pad_token
from dartlm.model.export import PROMPT_FILE, MergeMismatchError, PromptSpec, export_model
from dartlm.model.rem import RemSettings

SPEC = PromptSpec(method="dart", num_thought_tokens=4, thought_token=ST_TOKEN, separator="Answer:")


def trained_like(family, tokenizer):
    """A DART adapter model with non-zero LoRA and REM, its tokenizer and an ST-pathway probe batch."""
    tok = copy.deepcopy(tokenizer)
    ensure_pad_token(tok)
    base = make_model(family, len(tok))
    st_id = add_special_token(base, tok, ST_TOKEN)
    model = attach_adapters(base, LoraSettings(rank=8, alpha=16), RemSettings(rank=8, alpha=16))
    randomise_trainable(model)
    features = [dart_features(e, tok, st_id, SPEC.num_thought_tokens) for e in EXAMPLES]
    probe = DartCollator(tok.pad_token_id)(features)["st"]
    return model.eval(), tok, probe


STOCK_LOADER = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoModelForCausalLM
    folder, probe_path, out_path = sys.argv[1:]
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    probe = torch.load(probe_path)
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
    torch.save(logits, out_path)
    assert not any(name.startswith("dartlm") for name in sys.modules), "dartlm was imported"
    print(type(model).__name__)
    """
)


@pytest.mark.parametrize("family", FAMILIES)
def test_exported_folder_loads_with_stock_transformers(family, tokenizer, tmp_path):
    model, tok, probe = trained_like(family, tokenizer)
    with torch.no_grad():
        reference = model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
    out = tmp_path / "exported"
    check = export_model(model, tok, SPEC, probe, out, log=lambda _: None)
    assert check.passed and check.difference < check.fp32_rounding
    assert json.loads((out / PROMPT_FILE).read_text())["num_thought_tokens"] == 4
    assert (out / "model.safetensors").is_file()

    torch.save({k: probe[k] for k in ("input_ids", "attention_mask")}, tmp_path / "probe.pt")
    result = subprocess.run(
        [sys.executable, "-c", STOCK_LOADER, str(out), str(tmp_path / "probe.pt"), str(tmp_path / "logits.pt")],
        capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""},
    )
    assert result.returncode == 0, result.stderr
    logits = torch.load(tmp_path / "logits.pt")
    keep = probe["attention_mask"].bool()
    assert (logits - reference).abs()[keep].max().item() < 1e-4


def test_export_refuses_to_write_when_the_merge_is_wrong(tokenizer, tmp_path, monkeypatch):
    model, tok, probe = trained_like("llama", tokenizer)
    # Simulate a faulty merge: REM is dropped instead of folded into the weights.
    def drop_rem(merged):
        from dartlm.model.rem import rem_wrappers

        for parent in list(merged.modules()):
            for name, child in list(parent.named_children()):
                if child in rem_wrappers(merged):
                    setattr(parent, name, child.proj)

    monkeypatch.setattr(export_module, "merge_rem", drop_rem)
    out = tmp_path / "exported"
    with pytest.raises(MergeMismatchError, match="nothing was written"):
        export_model(model, tok, SPEC, probe, out, log=lambda _: None)
    assert not out.exists()


def test_batched_generation_with_left_padding_matches_one_by_one(tokenizer, tmp_path):
    model, tok, probe = trained_like("llama", tokenizer)
    export_model(model, tok, SPEC, probe, tmp_path / "m", log=lambda _: None)
    merged, tok2, spec = load_exported(tmp_path / "m")
    questions = [e.question for e in EXAMPLES] + ["How many?"]
    batched = generate_answers(merged, tok2, spec, questions, max_new_tokens=6, batch_size=4)
    single = [generate_answers(merged, tok2, spec, [q], max_new_tokens=6)[0] for q in questions]
    assert batched == single
    assert len(batched) == 4


def test_inference_prompt_is_the_st_pathway_without_the_answer(tokenizer, tmp_path):
    model, tok, probe = trained_like("llama", tokenizer)
    st_id = tok.convert_tokens_to_ids(ST_TOKEN)
    features = dart_features(EXAMPLES[0], tok, st_id, SPEC.num_thought_tokens)
    (prompt,) = prompt_ids([EXAMPLES[0].question], tok, SPEC)
    assert prompt == features.st.input_ids[: features.st.anchor + 1]


def test_merge_check_is_float64_relative_and_bounded_by_fp32_rounding(tokenizer, tmp_path):
    from dartlm.model.export import MergeCheck, merge_with_check, relative_difference

    model, tok, probe = trained_like("llama", tokenizer)
    merged, check = merge_with_check(model, probe)
    # A correct merge in float64 stays far below what running the model in fp32 changes (about 1e-7 here).
    assert 0 < check.fp32_rounding < 1e-5
    assert check.difference < check.fp32_rounding / 10
    assert next(merged.parameters()).dtype == torch.float64
    assert not MergeCheck(float("nan"), 1e-7, 1.0).passed
    assert MergeCheck(0.0, 0.0, 1.0).bound == 1e-12 and not MergeCheck(1e-11, 0.0, 1.0).passed
    keep = torch.tensor([[True, True], [True, False]])
    reference = torch.tensor([[[2.0, -4.0], [1.0, 0.0]], [[0.5, 0.5], [100.0, 0.0]]])
    logits = reference + torch.tensor([[[0.0, 0.4], [0.0, 0.0]], [[0.0, 0.0], [50.0, 0.0]]])
    # The masked-out position (diff 50) is ignored: 0.4 / max|reference over kept rows| = 0.4 / 4.
    assert relative_difference(reference, logits, keep) == pytest.approx(0.1)


def test_merge_check_refuses_a_slightly_wrong_merge(tokenizer, tmp_path, monkeypatch):
    model, tok, probe = trained_like("llama", tokenizer)
    from dartlm.model import rem as rem_module

    real_merged = rem_module.RemProjection.merged

    def off_by_a_thousandth(self):  # REM folded in with a 0.1% error in its scale
        self.rem.scaling *= 1.001
        return real_merged(self)

    monkeypatch.setattr(rem_module.RemProjection, "merged", off_by_a_thousandth)
    with pytest.raises(MergeMismatchError, match="of the logits' scale"):
        export_model(model, tok, SPEC, probe, tmp_path / "exported", log=lambda _: None)
    assert not (tmp_path / "exported").exists()


def test_export_saves_float32_weights_after_the_float64_check(tokenizer, tmp_path):
    from safetensors.torch import load_file

    model, tok, probe = trained_like("gpt2", tokenizer)
    export_model(model, tok, SPEC, probe, tmp_path / "m", log=lambda _: None)
    weights = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}
