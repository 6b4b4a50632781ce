"""Accelerate launch configs shipped with dartlm: FSDP2 and DeepSpeed ZeRO-2 / ZeRO-3 (README: "Training on GPUs")."""

from pathlib import Path

CONFIGS = ("fsdp", "deepspeed-zero2", "deepspeed-zero3")


def path(name: str) -> Path:
    """The file of a shipped accelerate config, for `accelerate launch --config_file`."""
    if name not in CONFIGS:
        raise ValueError(f"unknown launch config {name!r}; shipped: {', '.join(CONFIGS)}")
    return Path(__file__).resolve().parent / f"{name}.yaml"
