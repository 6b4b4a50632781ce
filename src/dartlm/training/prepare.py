"""Turn a base model into the trainable model of a method: special token, pad token, LoRA, REM."""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from dartlm import storage
from dartlm.config import Config
from dartlm.methods import get_method
from dartlm.methods.base import Method
from dartlm.model.adapters import LoraSettings, add_special_token, attach_adapters, ensure_pad_token
from dartlm.model.loading import DTYPES, load_base_model, load_tokenizer
from dartlm.model.rem import RemSettings
from dartlm.storage import remove_tree
from dartlm.training.folder import RunError, RunFolder

log = logging.getLogger(__name__)


def lora_settings(config: Config) -> LoraSettings | None:
    section = config.lora
    if not section.enabled:
        return None
    return LoraSettings(section.rank, section.alpha, section.dropout, tuple(section.target_modules))


def rem_settings(config: Config, method: Method) -> RemSettings | None:
    if not (method.uses_rem and config.rem.enabled):
        return None
    return RemSettings(config.rem.rank, config.rem.alpha, config.rem.placement)


def prepare_model(base: nn.Module, tokenizer, config: Config, method: Method) -> tuple[nn.Module, int | None]:
    """(trainable model, id of the method's thought token or None).

    With LoRA disabled every base weight trains (full fine-tuning, for small from-scratch models); REM is added
    either way when the method uses it.
    """
    ensure_pad_token(tokenizer)
    ids = {token: add_special_token(base, tokenizer, token) for token in method.special_tokens}
    thought_id = ids.get(method.thought_token)
    lora = lora_settings(config)
    model = attach_adapters(base, lora, rem_settings(config, method))
    if lora is None:
        for param in model.parameters():
            param.requires_grad_(True)
    method.extend_model(model, tokenizer)
    return model, thought_id


@dataclass
class PreparedRun:
    model: torch.nn.Module
    tokenizer: object
    method: Method
    thought_id: int | None


def build_model(config: Config, run_dir: Path, tokenizer=None, *, fresh: bool = False) -> PreparedRun:
    """The trainable model of a run: base weights, then the method's token, LoRA and REM.

    A random-initialised base is drawn from the seed when the run starts (`fresh`, identical on every rank) and
    saved to run_dir/base, because a resumed or exported run must find the very same weights.
    """
    method = get_method(config.method)
    tokenizer = tokenizer or load_tokenizer(config.model)
    base_dir = run_dir / "base"
    if config.model.name_or_path:
        base = load_base_model(config.model)
    elif fresh:
        base = load_base_model(config.model)
        if is_main_process():
            _save_atomically(base, base_dir)
    elif base_dir.is_dir():
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=DTYPES[config.model.dtype])
    else:
        raise RunError(f"{run_dir}: the run's random-initialised base weights (base/) are missing")
    model, thought_id = prepare_model(base, tokenizer, config, method)
    return PreparedRun(model, tokenizer, method, thought_id)


def _save_atomically(model, folder: Path) -> None:
    """Write to a temporary sibling, then rename: a reader never sees half a folder."""
    staging = storage.staging_folder(folder)
    try:
        model.save_pretrained(staging)
        storage.replace_folder(staging, folder)
    finally:
        remove_tree(staging)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def load_trained(folder: RunFolder, checkpoint: str | None = None, dtype: str | None = None) -> PreparedRun:
    """A run's model rebuilt with its final weights (or a given checkpoint's), optionally in another dtype."""
    from dartlm.training.trainer import TRAINABLE_WEIGHTS, last_complete_checkpoint, load_trainable_state

    config = copy.deepcopy(folder.config)
    if dtype:
        config.model.dtype = dtype
    run = build_model(config, folder.path, copy.deepcopy(folder.tokenizer))
    source = Path(checkpoint) if checkpoint else folder.path
    weights = source / TRAINABLE_WEIGHTS
    if not weights.is_file():
        last = last_complete_checkpoint(str(folder.path)) if not checkpoint else None
        if last is None:
            raise RunError(f"{source}: no {TRAINABLE_WEIGHTS}; has the run saved anything yet?")
        weights = Path(last) / TRAINABLE_WEIGHTS
        log.warning("%s: the run has not finished; using %s", folder.path, last)
    load_trainable_state(run.model, str(weights))
    run.model.eval()
    return run
