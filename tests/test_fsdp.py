"""DART under FSDP2 on two CPU processes (gloo): the gradients and losses of the unsharded run (tests/fsdp_worker.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = str(Path(__file__).with_name("fsdp_worker.py"))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def launch(tmp_path, distill_grad):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           WORKER, str(tmp_path / "rank{rank}.json"), distill_grad],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)


def test_sharded_dart_has_the_unsharded_gradients_with_the_early_backward(tmp_path):
    result = launch(tmp_path, "all")
    assert result.returncode == 0, result.stderr[-4000:]
    for rank in (0, 1):
        record = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert record["rem_params"] > 0 and record["trainable"] > record["rem_params"]  # LoRA and REM both train
        # The per-rank loss is the unsharded loss on that rank's half, step after step.
        assert record["losses"] == pytest.approx(record["reference_losses"], rel=1e-5)
        # Gradients of every trainable weight: FSDP's reduce-scattered mean equals the mean of the halves'.
        for diff, scale in zip(record["grad_diff"], record["grad_scale"]):
            assert scale > 1e-2 and diff <= 1e-5 * scale
        assert max(record["weight_diff"]) < 1e-5  # and the weights after three AdamW steps
        # dartlm's saving gathers the shards into whole weights, and loading re-shards them.
        assert record["saved_names_match"] and record["saved_diff"] < 1e-5
        assert record["reloaded_diff"] == 0.0


def test_routing_l_distill_into_rem_is_refused_under_fsdp(tmp_path):
    result = launch(tmp_path, "student")
    assert result.returncode != 0
    assert "method.distill_grad=student is not supported with sharded weights (FSDP)" in result.stderr
