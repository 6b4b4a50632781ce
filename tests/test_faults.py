"""Faults lose no work: a SIGKILLed run resumes to the same weights, a NaN stops cleanly, half-written
checkpoints are never trusted, over-long examples are named."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from dartlm.config import load_config
from dartlm.data.readers import DataError
from dartlm.methods.dart import DartMethod
from dartlm.training.run import train
from dartlm.training.trainer import COMPLETE_MARKER, TRAINABLE_WEIGHTS, NonFiniteLossError, last_complete_checkpoint

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
OVERRIDES = ["training.max_steps=120", "training.save_steps=10", "training.batch_size=4", "training.logging_steps=10"]


def test_sigkill_at_a_random_point_then_resume_gives_the_uninterrupted_weights(tmp_path, train_file, fault_rng):
    overrides = [f"data.train_path={train_file}", *OVERRIDES]
    reference_dir = tmp_path / "reference"
    train(load_config("tiny/dart", overrides), reference_dir)
    reference = load_file(reference_dir / TRAINABLE_WEIGHTS)

    run_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "dartlm.cli", "train", "tiny/dart", *overrides, "--output-dir", str(run_dir)]
    # The kill point is counted in training progress, not wall time: on a fast machine the whole run takes about a
    # second, so a random sleep could outlast it. The run logs every 10 steps, right before it saves a checkpoint;
    # killing a random short while after the k-th log line lands anywhere from step 10 to 100 of 120, often mid-save.
    kill_after_log = fault_rng.randint(1, 10)
    process = subprocess.Popen(command, env={**ENV, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    logs_seen = 0
    for line in process.stdout:
        logs_seen += line.startswith("{'loss'")
        if logs_seen == kill_after_log:
            break
    assert logs_seen == kill_after_log, "training ended before the kill"
    time.sleep(fault_rng.uniform(0.0, 0.05))
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    process.stdout.close()
    assert not (run_dir / TRAINABLE_WEIGHTS).exists(), "the run finished before the kill: the test proved nothing"

    resumed = subprocess.run(command + ["--resume"], env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    weights = load_file(run_dir / TRAINABLE_WEIGHTS)
    assert all(torch.equal(weights[k], reference[k]) for k in reference)


def test_a_checkpoint_without_its_completion_marker_is_never_resumed_from(tmp_path, train_file):
    run_dir = tmp_path / "run"
    train(load_config("tiny/nocot", [f"data.train_path={train_file}", "training.max_steps=20",
                                     "training.save_steps=10", "training.save_total_limit=0"]), run_dir)
    assert last_complete_checkpoint(str(run_dir)).endswith("checkpoint-20")
    (run_dir / "checkpoint-20" / COMPLETE_MARKER).unlink()  # as if killed while writing it
    (run_dir / "checkpoint-20" / TRAINABLE_WEIGHTS).write_bytes(b"half a file")
    assert last_complete_checkpoint(str(run_dir)).endswith("checkpoint-10")


def test_nan_loss_stops_with_the_step_and_term_and_keeps_the_last_checkpoint(tmp_path, train_file, monkeypatch):
    real_loss = DartMethod.loss
    calls = {"n": 0}

    def poisoned(self, model, batch, backward=None):
        calls["n"] += 1
        total, terms = real_loss(self, model, batch, backward)
        if calls["n"] == 13:
            terms["loss_distill"] = float("nan")
            total = total * float("nan")
        return total, terms

    monkeypatch.setattr(DartMethod, "loss", poisoned)
    run_dir = tmp_path / "run"
    config = load_config("tiny/dart", [f"data.train_path={train_file}", "training.max_steps=30", "training.save_steps=5"])
    with pytest.raises(NonFiniteLossError, match=r"step 13: loss_distill"):
        train(config, run_dir)
    assert last_complete_checkpoint(str(run_dir)).endswith("checkpoint-10")
    assert not (run_dir / TRAINABLE_WEIGHTS).exists()


def test_over_long_examples_are_named_or_dropped_and_counted(tmp_path, train_file, caplog):
    config = load_config("tiny/cot", [f"data.train_path={train_file}", "data.max_length=40", "training.max_steps=1"])
    with pytest.raises(DataError, match=r"train\.txt:1: example is \d+ tokens long, above data.max_length=40"):
        train(config, tmp_path / "a")
    lines = train_file.read_text().splitlines()
    train_file.write_text("\n".join(lines[:3]) + "\nShort?||<<1+1=2>> #### 2\n")
    config = load_config("tiny/cot", [f"data.train_path={train_file}", "data.max_length=40", "data.drop_long=true",
                                      "training.max_steps=1"])
    train(config, tmp_path / "b")
    assert "dropped 3 examples longer than 40 tokens" in caplog.text


def test_export_refuses_a_non_empty_folder_without_force(tmp_path, train_file, capsys):
    from dartlm.cli import main

    train(load_config("tiny/nocot", [f"data.train_path={train_file}", "training.max_steps=1"]), tmp_path / "run")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "out")]) == 2
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "out" / "notes.txt").read_text() == "keep me"
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "out"), "--force"]) == 0


def test_a_tokenizer_without_a_pad_token_pads_with_eos(tokenizer):
    import copy

    from dartlm.model.adapters import ensure_pad_token

    tok = copy.deepcopy(tokenizer)
    tok.pad_token = None
    assert tok.pad_token_id is None
    ensure_pad_token(tok)
    assert tok.pad_token_id == tok.eos_token_id


def test_skip_invalid_counts_and_reports_and_numeric_answers_are_checked(tmp_path, train_file, capsys, caplog):
    from dartlm.cli import main

    lines = train_file.read_text().splitlines()
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join([lines[0], "no separators here", lines[1], "Q?||<<1+1=2>> #### two"]) + "\n")
    args = ["train", "tiny/nocot", f"data.train_path={bad}", "training.max_steps=1"]
    assert main([*args, "--output-dir", str(tmp_path / "a")]) == 2
    assert "bad.txt:2: missing the" in capsys.readouterr().err
    assert main([*args, "data.numeric_answers=true", "--skip-invalid", "--output-dir", str(tmp_path / "b")]) == 0
    assert "2 examples read, 2 invalid records skipped (first: " in caplog.text
    numbers = tmp_path / "numbers.txt"
    numbers.write_text(lines[0] + "\nQ?||<<1+1=2>> #### two\n")
    args = ["train", "tiny/nocot", f"data.train_path={numbers}", "data.numeric_answers=true", "training.max_steps=1"]
    assert main([*args, "--output-dir", str(tmp_path / "c")]) == 2
    assert "numbers.txt:2: field 'answer' is not a number: 'two'" in capsys.readouterr().err


def test_a_config_without_a_model_is_refused(tmp_path):
    from dartlm.config import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("method:\n  name: dart\n")
    with pytest.raises(ConfigError, match="set model.name_or_path"):
        load_config(path)
