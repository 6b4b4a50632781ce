"""The command line end to end, as a user runs it: train, export, generate (subprocesses)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from dartlm.cli import main

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def dartlm(*args, cwd):
    return subprocess.run([sys.executable, "-m", "dartlm.cli", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=600)


def test_train_export_generate_end_to_end(tmp_path, train_file):
    result = dartlm("train", "tiny/dart", f"data.train_path={train_file}", "training.max_steps=40",
                    "training.logging_steps=4", "--output-dir", "run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [entry for entry in logs if "loss" in entry]
    assert len(steps) == 10
    for entry in steps:
        for term in ("loss", "loss_cot", "loss_st", "loss_distill"):
            assert math.isfinite(entry[term]), entry
    first, last = steps[0]["loss"], sum(e["loss"] for e in steps[-3:]) / 3
    assert last < 0.7 * first, [e["loss"] for e in steps]

    result = dartlm("export", "run", "exported", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "merge check: max |logit difference|" in result.stdout

    questions = ["Tom has 12 apples and buys 30 more. He doubles them. How many apples?", "What is 2 and 2?"]
    result = dartlm("generate", "exported", *questions, "--max-new-tokens", "6", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(result.stdout.splitlines()) == len(questions)


def test_cot_model_prints_its_chain_of_thought(tmp_path, train_file):
    assert dartlm("train", "tiny/cot", f"data.train_path={train_file}", "training.max_steps=2",
                  "--output-dir", "run", cwd=tmp_path).returncode == 0
    assert dartlm("export", "run", "exported", cwd=tmp_path).returncode == 0
    result = dartlm("generate", "exported", "How many?", "--max-new-tokens", "5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("CoT:")


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "tiny/dart", "method.name=magic"], "unknown method 'magic'"),
        (["train", "tiny/dart", "training.lr=fast"], "training.lr: expected float"),
        (["train", "tiny/dart", "data.train_path=missing.txt"], "missing.txt"),
        (["export", "not-a-run", "out"], "not a dartlm run folder"),
        (["train", "tiny/dart", "data.train_path=zen-E/GSM8k-Aug"], "pass the local file instead"),
    ],
)
def test_errors_are_one_clear_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_refuses_to_train_over_a_finished_run(tmp_path, train_file):
    args = ["train", "tiny/nocot", f"data.train_path={train_file}", "training.max_steps=1", "--output-dir", "run"]
    assert dartlm(*args, cwd=tmp_path).returncode == 0
    again = dartlm(*args, cwd=tmp_path)
    assert again.returncode == 2 and "--resume" in again.stderr
