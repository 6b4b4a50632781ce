"""Checks, before anything loads, that a run launched under a sharding mode (Accelerate FSDP or DeepSpeed) can be
trained correctly in it. `accelerate launch --config_file dartlm/launch/<mode>.yaml` passes the mode to the
training processes as environment variables, which are read here.

- FSDP: trains with the early L_CoT backward (two backward passes per step; the gradients equal the unsharded
  run's, tests/test_fsdp.py). Routing L_distill into REM alone (method.distill_grad=student) needs whole weights
  and is refused. Accelerate runs CPU processes as DDP whatever the config says: a warning says so.
- DeepSpeed: needs CUDA and the deepspeed package; one backward per step (MethodTrainer); its accumulation steps
  and clipping, set in the accelerate config, must equal the run's.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Mapping

import torch

from dartlm.config import Config, ConfigError

log = logging.getLogger(__name__)


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "false").strip().lower() == "true"


def sharding_mode(env: Mapping[str, str] = os.environ) -> str:
    """"deepspeed", "fsdp" or "" (none: one process, DDP or torchrun)."""
    if _flag(env, "ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
    return "fsdp" if _flag(env, "ACCELERATE_USE_FSDP") else ""


def check_sharding(config: Config, env: Mapping[str, str] = os.environ, cuda: bool | None = None) -> str:
    """Raise ConfigError when the launch's sharding mode cannot train this config as configured; returns the mode."""
    mode = sharding_mode(env)
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if mode and config.method.distill_grad == "student":
        raise ConfigError(f"method.distill_grad=student is not supported under {mode}: its stand-in gradient is taken "
                          "with respect to whole weights, which are sharded here; use distill_grad=all or DDP "
                          "(torchrun)")
    if mode == "fsdp" and not cuda:
        log.warning("the accelerate config asks for FSDP, but Accelerate runs CPU processes as DDP: the weights "
                    "are not sharded")
    if mode != "deepspeed":
        return mode
    check_deepspeed_fields(config, env)
    stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "?")
    if not cuda:
        raise ConfigError(f"DeepSpeed (ZeRO-{stage}) needs CUDA GPUs and none is visible; on CPUs train with "
                          "torchrun (DDP), as in the README's 'Training on GPUs'")
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"DeepSpeed (ZeRO-{stage}) is asked for by the accelerate config but the deepspeed "
                          "package is not installed: pip install deepspeed")
    return mode


def check_deepspeed_fields(config: Config, env: Mapping[str, str]) -> None:
    """The accelerate config's DeepSpeed accumulation steps and clipping must be the run's own."""
    t = config.training
    steps = env.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS")
    if steps is not None and int(steps) != t.grad_accum:
        raise ConfigError(f"training.grad_accum is {t.grad_accum} but the accelerate config's "
                          f"deepspeed_config.gradient_accumulation_steps is {steps}: set them equal")
    clipping = env.get("ACCELERATE_GRADIENT_CLIPPING")
    if clipping is not None and clipping != "none" and float(clipping) != t.max_grad_norm:
        raise ConfigError(f"training.max_grad_norm is {t.max_grad_norm:g} but the accelerate config's "
                          f"deepspeed_config.gradient_clipping is {clipping}: set them equal")
