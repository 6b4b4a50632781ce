"""Resuming from a checkpoint reproduces the uninterrupted run (CPU, fixed seed)."""

from __future__ import annotations

import shutil

import torch
from safetensors.torch import load_file

from dartlm.config import load_config
from dartlm.training.run import train
from dartlm.training.trainer import TRAINABLE_WEIGHTS


def test_resume_reproduces_the_uninterrupted_weights(tmp_path, train_file):
    config = load_config("tiny/dart", [f"data.train_path={train_file}", "training.max_steps=12",
                                       "training.save_steps=6", "training.batch_size=4"])
    run_dir = tmp_path / "run"
    train(config, run_dir)
    uninterrupted = load_file(run_dir / TRAINABLE_WEIGHTS)

    # Pretend the run died after its first checkpoint.
    shutil.rmtree(run_dir / "checkpoint-12")
    (run_dir / TRAINABLE_WEIGHTS).unlink()
    train(config, run_dir, resume=True)
    resumed = load_file(run_dir / TRAINABLE_WEIGHTS)

    assert resumed.keys() == uninterrupted.keys()
    worst = max((resumed[k] - uninterrupted[k]).abs().max().item() for k in resumed)
    assert worst == 0.0, f"resumed weights differ by up to {worst}"
    # And training did move the weights (a vacuous comparison would also pass if nothing trained).
    start = load_file(run_dir / "checkpoint-6" / TRAINABLE_WEIGHTS)
    assert any(not torch.equal(start[k], resumed[k]) for k in resumed)
