"""The GPU dtype path, exercised on CPU: a tiny DART under bf16 autocast with bf16 base weights, exported in bf16
through the float64 merge check, and loaded back in bf16."""

from __future__ import annotations

import json

import torch
from safetensors import safe_open

from dartlm.config import load_config
from dartlm.generate import generate, load_exported
from dartlm.exports.run import export_run
from dartlm.training.run import train


def test_bf16_training_and_export_on_cpu(tmp_path, train_file):
    config = load_config("tiny/dart", [f"data.train_path={train_file}", "training.max_steps=3",
                                       "training.batch_size=4", "training.bf16=true", "model.dtype=bfloat16",
                                       "training.logging_steps=1"])
    trainer = train(config, tmp_path / "run")
    assert trainer.args.bf16 and not torch.cuda.is_available()
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert sum("loss_distill" in r for r in logged) == 3
    check = export_run(tmp_path / "run", tmp_path / "bf16", log=lambda *_: None)
    assert check.passed  # compared in float64, whatever the saved dtype
    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), "pt") as weights:
        assert {weights.get_tensor(name).dtype for name in weights.keys()} == {torch.bfloat16}
    export_run(tmp_path / "run", tmp_path / "fp32", dtype="float32", log=lambda *_: None)
    with safe_open(str(tmp_path / "fp32" / "model.safetensors"), "pt") as weights:
        assert {weights.get_tensor(name).dtype for name in weights.keys()} == {torch.float32}
    model, tokenizer, spec = load_exported(tmp_path / "bf16", dtype=torch.bfloat16)
    answers = generate(model, tokenizer, spec, ["Tom has 12 apples and buys 30 more. He doubles them. How many?"],
                       max_new_tokens=4)
    assert len(answers) == 1 and answers[0].num_tokens <= 4
