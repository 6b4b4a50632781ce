"""`transformers.Trainer` with one `compute_loss` per method, and checkpoints that hold only what trains."""

from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback

from dartlm.methods.base import Method
from dartlm.methods.distill_guards import is_sharded
from dartlm.storage import remove_tree, save_safetensors

log = logging.getLogger(__name__)

TRAINABLE_WEIGHTS = "trainable.safetensors"
# Written into a checkpoint folder after every rank has finished writing it. A kill mid-save leaves a folder
# without it, which resuming skips: the last *complete* checkpoint is the one that counts.
COMPLETE_MARKER = "dartlm_complete"


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; training stops instead of corrupting the weights."""


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded weight (a collective: every rank must call it)."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter that trains (LoRA, REM, or all weights under full fine-tuning), whole, contiguous, on CPU.

    Under FSDP2 the weights are gathered from every rank, so every rank must call this.
    """
    return {name: _full(p.detach()).contiguous().cpu() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, path: str) -> None:
    """Copy saved trainable weights into the model; every trainable parameter must be in the file."""
    saved = load_file(path)
    params = dict(model.named_parameters())
    expected = {name for name, p in params.items() if p.requires_grad}
    missing, unexpected = expected - set(saved), set(saved) - set(params)
    if missing or unexpected:
        raise ValueError(
            f"{path}: does not match the model: {len(missing)} trainable weights missing (e.g. {sorted(missing)[:2]}), "
            f"{len(unexpected)} unknown (e.g. {sorted(unexpected)[:2]})"
        )
    with torch.no_grad():
        for name, tensor in saved.items():
            param = params[name]
            if is_sharded(param):  # FSDP2: keep this rank's shard of the whole tensor
                from torch.distributed.tensor import distribute_tensor

                tensor = distribute_tensor(tensor.to(param.dtype), param.device_mesh, param.placements)
            param.copy_(tensor)


class MethodTrainer(Trainer):
    """Trainer whose loss is the method's; logs the method's extra terms (DART: loss_cot, loss_st, loss_distill)."""

    # Our losses are means over the micro-batch; let the Trainer divide by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, method: Method, keep_checkpoints: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.method = method
        # Old checkpoints are deleted here, after the new one is marked complete (transformers' own rotation,
        # switched off in the arguments, runs before the marker is written: a kill in between could leave no
        # complete checkpoint at all). 0 keeps every checkpoint.
        self.keep_checkpoints = keep_checkpoints
        self._early_backward = None
        self._terms: dict[str, list[float]] = defaultdict(list)
        self._reset_step = -1
        self.optimizer_resets = 0
        self.collapse_warned = False
        self._one_backward_logged = False

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.is_deepspeed_enabled:
            # DeepSpeed's engine owns the backward pass and reduces gradients at its own accumulation boundaries; a
            # second backward within one step is not a use it supports, so the whole loss goes back once (the same
            # gradients, with both pathways' activations held at the peak).
            if not self._one_backward_logged:
                self._one_backward_logged = True
                log.warning("DeepSpeed: the CoT pathway's loss is back-propagated together with the rest, in one "
                            "backward per step (the early L_CoT backward is off); gradients are unchanged, peak "
                            "activation memory holds both pathways")
            return super().training_step(model, inputs, num_items_in_batch)
        # Lets a method back-propagate part of its loss early, scaled exactly as the Trainer scales the rest.
        self._early_backward = lambda part: self.accelerator.backward(part / self.current_gradient_accumulation_steps)
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            self._early_backward = None

    def epochs_done(self, step: int) -> float:
        """Training progress after `step` optimizer steps, in epochs of this run's data."""
        batches = math.ceil(len(self.train_dataset) / (self.args.per_device_train_batch_size * self.args.world_size))
        return step / max(1, batches // self.args.gradient_accumulation_steps)

    def advance(self) -> None:
        """Tell the method where training is; for a curriculum, reset the optimizer's moments when its stage changes."""
        step = self.state.global_step
        epoch = self.epochs_done(step)
        self.method.set_progress(epoch, step, self.state.max_steps)
        if self.method.curriculum and step > 0 and self._reset_step != step and \
                self.method.schedule_key(epoch, step) != self.method.schedule_key(self.epochs_done(step - 1), step - 1):
            optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # Accelerate wraps it
            optimizer.state.clear()
            self._reset_step = step
            self.optimizer_resets += 1

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.advance()
        loss, terms = self.method.loss(model, inputs, backward=self._early_backward)
        if not torch.isfinite(loss):
            bad = [k for k, v in terms.items() if not math.isfinite(v)] or ["loss"]
            raise NonFiniteLossError(
                f"non-finite loss at step {self.state.global_step + 1}: {', '.join(bad)} "
                f"({', '.join(f'{k}={v}' for k, v in terms.items()) or f'loss={loss.item()}'}); "
                "training stopped, the last saved checkpoint is intact"
            )
        for key, value in terms.items():
            self._terms[key].append(value)
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._terms:
            logs.update({key: round(sum(v) / len(v), 6) for key, v in self._terms.items()})
            self._terms.clear()
            self.watch_for_collapse(logs)
        super().log(logs, start_time)

    def watch_for_collapse(self, logs: dict[str, float]) -> None:
        """Warn when the teacher's states at the distilled positions stop differing between examples."""
        threshold = self.method.config.collapse_warning_spread
        spread = logs.get("teacher_spread")
        if spread is None or not threshold or spread >= threshold:
            return
        logs["collapse_suspected"] = 1.0
        if not self.collapse_warned:
            self.collapse_warned = True
            log.warning(
                "step %d: teacher_spread %.2g is below %g: distillation collapse suspected (the distilled position "
                "no longer depends on the question; loss_distill %s, loss_cot %s). Consider method.distill_grad="
                "student, a lower method.distill_weight, a delayed lambda (method.distill_start) or a frozen "
                "pretrained base with LoRA; see the README's 'When things go wrong'",
                self.state.global_step, spread, threshold, logs.get("loss_distill"), logs.get("loss_cot"))

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()  # every rank has written its part (RNG states are per rank)
        if self.args.should_save:
            folder = os.path.join(self.args.output_dir, f"checkpoint-{self.state.global_step}")
            with open(os.path.join(folder, COMPLETE_MARKER), "w") as handle:
                handle.write(f"{self.state.global_step}\n")
                handle.flush()
                os.fsync(handle.fileno())
            if self.keep_checkpoints:
                prune_checkpoints(self.args.output_dir, self.keep_checkpoints)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Save only the trainable weights; the base model is rebuilt from the run's config."""
        output_dir = output_dir or self.args.output_dir
        state = trainable_state(self.accelerator.unwrap_model(self.model))  # every rank: FSDP gathers the shards
        if not self.args.should_save:
            return
        save_safetensors(state, os.path.join(output_dir, TRAINABLE_WEIGHTS))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        load_trainable_state(model or self.model, os.path.join(resume_from_checkpoint, TRAINABLE_WEIGHTS))


def checkpoints(run_dir: str) -> list[tuple[int, str, bool]]:
    """(step, path, complete) of every checkpoint-N folder of the run, by step."""
    found = []
    for name in os.listdir(run_dir):
        path = os.path.join(run_dir, name)
        if name.startswith("checkpoint-") and name[11:].isdigit() and os.path.isdir(path):
            found.append((int(name[11:]), path, os.path.isfile(os.path.join(path, COMPLETE_MARKER))))
    return sorted(found)


def last_complete_checkpoint(run_dir: str) -> str | None:
    """The highest-numbered checkpoint-N folder of the run that was completely written, or None."""
    complete = [path for _, path, done in checkpoints(run_dir) if done]
    return complete[-1] if complete else None


def prune_checkpoints(run_dir: str, keep: int) -> None:
    """Keep the `keep` newest complete checkpoints; delete older ones and any incomplete one older than those."""
    found = checkpoints(run_dir)
    complete = [step for step, _, done in found if done]
    if len(complete) <= keep:
        return
    oldest_kept = complete[-keep]
    for step, path, _ in found:
        if step < oldest_kept:
            remove_tree(Path(path))


class JsonlLogCallback(TrainerCallback):
    """Append every log record (step, losses, learning rate) to a JSONL file in the run folder."""

    def __init__(self, path: str):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": state.global_step, **logs}) + "\n")
