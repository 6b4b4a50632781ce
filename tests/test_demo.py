"""`dartlm demo --quick`: the whole pipeline on the embedded default, as a newcomer runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_quick_demo_trains_evaluates_exports_and_answers(tmp_path):
    env = {**ENV, "DARTLM_CACHE": str(tmp_path / "cache")}  # the base model is built here, not in the user's cache
    result = subprocess.run([sys.executable, "-m", "dartlm.cli", "demo", "--quick", "--output-dir", "demo"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert set(summary["results"]) == {"nocot", "cot", "pause", "dart"}
    # The paper's regime: every method fine-tunes the same cached base with LoRA.
    assert summary["settings"]["base_steps"] > 0 and list((tmp_path / "cache" / "models").glob("arith-base-*"))
    for method, r in summary["results"].items():
        scored = (tmp_path / "demo" / "results" / f"{method}.jsonl").read_text().splitlines()[1:]
        right = sum(json.loads(line)["strict"] for line in scored)
        assert len(scored) == summary["settings"]["n_test"] and r["accuracy"]["strict"] == right / len(scored)
        # Timed side by side, every model on the same questions.
        assert r["latency_ms"]["n"] == summary["settings"]["latency_items"] == 6 and r["latency_ms"]["median"] > 0
    # DART and PauseFT prompts carry the C thought tokens that No-CoT's lack.
    c = summary["settings"]["num_thought_tokens"]
    nocot_prompt = summary["results"]["nocot"]["prompt_tokens"]["mean"]
    assert summary["results"]["dart"]["prompt_tokens"]["mean"] == nocot_prompt + c
    assert (tmp_path / "demo" / "demo.png").read_bytes()[:4] == b"\x89PNG"
    assert "| method | accuracy % |" in result.stdout
    # A few test questions with every method's answer, each marked right or wrong.
    assert result.stdout.count("  Q: ") == 4
    answers = [line for line in result.stdout.splitlines() if line.startswith("     nocot ")]
    assert len(answers) == 4 and all(line.count(" | ") == 3 for line in answers)
    # The exported DART model is a plain transformers model.
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "demo" / "models" / "dart")
    assert type(model).__name__ == "LlamaForCausalLM"


def test_set_assigns_demo_settings_with_the_config_files_type_checks():
    from dartlm.config import ConfigError
    from dartlm.experiments.settings import DemoSettings, apply_settings, base_spec, method_config

    settings = apply_settings(DemoSettings(), ["lr=3e-3", "n_train=16000", "base_seed=1", "warmup_ratio=0.1",
                                               "lora_targets=all", "methods=nocot,cot"])
    assert (settings.lr, settings.n_train, settings.base_seed, settings.warmup_ratio) == (3e-3, 16000, 1, 0.1)
    assert settings.lora_targets == "all" and settings.methods == ("nocot", "cot")
    assert isinstance(settings.lr, float)
    # Another base seed is another base (its own cache folder); the run config carries the warm-up.
    assert base_spec(settings).seed == 1 and base_spec(settings).folder() != base_spec(DemoSettings()).folder()
    config = method_config(settings, "nocot", Path("data"), Path("run"), Path("base"), 10)
    assert config.training.warmup_ratio == 0.1
    for bad, message in (("lrx=1", "unknown demo setting 'lrx'"), ("lr=fast", "lr: expected float"),
                         ("n_train=1.5", "n_train: expected int"), ("lr", "expected field=value"),
                         ("methods=nocot,magic", "unknown method(s) magic"), ("lr=[", "invalid value")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            apply_settings(DemoSettings(), [bad])


def test_command_flags_go_through_the_same_parser_as_set():
    from dartlm.config import ConfigError
    from dartlm.experiments.settings import DemoSettings, settings_from_options

    flags = {"lr": 3e-3, "methods": "nocot,dart", "operations": "+-*", "layers": None, "output_dir": "ignored"}
    settings = settings_from_options(flags, ["n_train=100"], quick=True)
    assert (settings.lr, settings.methods, settings.operations, settings.n_train) == \
        (3e-3, ("nocot", "dart"), "+-*", 100)
    assert settings.layers == DemoSettings.quick().layers  # a flag not given keeps the default
    # a base trained on the task's text, or a given pretrained model, replaces the general base unless asked for
    assert settings_from_options({"pretrain_steps": 10}).base_steps == 0
    assert settings_from_options({"base_model": "smollm2-135m"}).base_steps == 0
    assert settings_from_options({"pretrain_steps": 10, "base_steps": 50}).base_steps == 50
    assert settings_from_options({"train_steps": 7}, ["train_steps=9"]).train_steps == 9  # --set comes last
    with pytest.raises(ConfigError, match=re.escape("unknown method(s) magic")):
        settings_from_options({"methods": "nocot,magic"})
