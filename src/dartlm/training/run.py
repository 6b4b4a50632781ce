"""`dartlm train`: one run folder per training run, and rebuilding a trained model from that folder.

A run folder holds:
    config.yaml            the resolved configuration (overrides applied)
    dartlm_run.json        marks the folder as a dartlm run; versions; the thought-token id
    tokenizer/             the tokenizer with the method's special token
    base/                  the initial weights, for random-initialised models only (pretrained ones are reloaded)
    log.jsonl              every logged step
    checkpoint-N/          Trainer checkpoints (trainable weights, optimizer, scheduler, RNG)
    trainable.safetensors  the final trainable weights
"""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack
from pathlib import Path

import torch
import yaml
from torch.utils.data import Dataset
from transformers import AutoTokenizer, TrainingArguments, set_seed

from dartlm import __version__, storage
from dartlm.config import Config, ConfigError, to_dict
from dartlm.data.readers import DataError
from dartlm.data.sources import load_examples
from dartlm.methods.base import Method
from dartlm.storage import OutputLock, remove_tree
from dartlm.training.folder import RUN_FILE, RunError, RunFolder
from dartlm.training.prepare import PreparedRun, build_model, is_main_process
from dartlm.training.prepare import load_trained as load_folder
from dartlm.training.sharding import check_sharding
from dartlm.training.trainer import (
    JsonlLogCallback,
    MethodTrainer,
    last_complete_checkpoint,
)

log = logging.getLogger(__name__)

class FeatureDataset(Dataset):
    def __init__(self, features: list):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int):
        return self.features[index]


def encode_examples(examples, tokenizer, method: Method, thought_id, max_length: int, drop_long: bool) -> list:
    """Tokenise every example; an over-long one is an error naming its origin unless drop_long (then counted)."""
    features, dropped = [], []
    for example in examples:
        encoded = method.encode(example, tokenizer, thought_id)
        length = method.length(encoded)
        if length <= max_length:
            features.append(encoded)
        elif drop_long:
            dropped.append(example.origin)
        else:
            raise DataError(
                f"{example.origin}: example is {length} tokens long, above data.max_length={max_length}; "
                "raise data.max_length or set data.drop_long=true to drop such examples"
            )
    if dropped:
        log.warning("dropped %d examples longer than %d tokens (first: %s)", len(dropped), max_length, dropped[0])
    if not features:
        raise DataError(f"no training examples left (of {len(examples)}) after the length limit {max_length}")
    return features


def bf16_enabled(setting) -> bool:
    if setting == "auto":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(setting)


def training_arguments(config: Config, run_dir: Path, method: Method) -> TrainingArguments:
    t = config.training
    on_cpu = not torch.cuda.is_available()
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return TrainingArguments(
        output_dir=str(run_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a ratio of the total steps
        lr_scheduler_type=t.scheduler,
        max_grad_norm=t.max_grad_norm,
        optim="adamw_torch",
        seed=t.seed,
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=None,  # MethodTrainer prunes, after the new checkpoint is marked complete
        bf16=bf16_enabled(t.bf16),
        use_cpu=on_cpu,  # without it, torchrun on CPU would train each rank alone
        ddp_backend="gloo" if on_cpu and distributed else None,
        # DART back-propagates its CoT pathway (which does not use REM) before running the ST pathway, so DDP must
        # expect weights that one backward leaves unused; the other methods use every trainable weight.
        ddp_find_unused_parameters=method.uses_rem,
        dataloader_num_workers=t.dataloader_workers,
        remove_unused_columns=False,
        disable_tqdm=not t.progress_bar,
        report_to="none",
    )


def check_run_dir(run_dir: Path, config: Config, resume: bool, overwrite: bool) -> None:
    """Never train over finished work by accident, and never continue a run under another config."""
    if resume:
        if not (run_dir / RUN_FILE).is_file():
            raise RunError(f"{run_dir}: not a dartlm run folder (no {RUN_FILE}); nothing to resume")
        changed = config_changes(load_run_config(run_dir), config)
        if changed:
            raise RunError(f"{run_dir}: cannot resume: the config differs from the run's config.yaml in "
                           f"{', '.join(changed)}; train into another folder, or pass --overwrite to start over")
        return
    # Rank 0 alone judges: the other ranks may look after rank 0 has started writing. If rank 0 refuses, the
    # launcher stops them all.
    if is_main_process() and run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite:
        raise RunError(f"{run_dir}: the run folder is not empty; pass --resume to continue it or --overwrite")


def config_changes(old: Config, new: Config) -> list[str]:
    """The `section.key` names whose values differ between two configs, save/report frequency aside."""
    a, b = _training_relevant(old), _training_relevant(new)
    return [f"{section}.{key}" for section in b for key in sorted(set(a[section]) | set(b[section]))
            if a[section].get(key) != b[section].get(key)]


def train(config: Config, run_dir: Path, *, resume: bool | str = False, overwrite: bool = False) -> MethodTrainer:
    """Train `config` into `run_dir`; resume=True continues from the last checkpoint, a path from that one.

    The run folder is locked for the whole run (a second writer is refused). With overwrite, the old run is deleted
    once the new one's data have been read, before anything is written: nothing of it can pass for the new run.
    """
    check_sharding(config)  # a sharding mode (accelerate launch) that cannot train this config fails here
    # Fail on bad data before any model loads and before anything is written.
    examples = load_examples(
        config.data.train_path, format=config.data.format, omit_last_step=config.data.omit_last_step,
        skip_invalid=config.data.skip_invalid, numeric_answers=config.data.numeric_answers,
    )
    with ExitStack() as held:
        if is_main_process():
            held.enter_context(OutputLock(run_dir, "run folder"))
        check_run_dir(run_dir, config, bool(resume), overwrite)
        return _train(config, run_dir, examples, resume, overwrite)


def _train(config: Config, run_dir: Path, examples, resume: bool | str, overwrite: bool) -> MethodTrainer:
    if overwrite and not resume and is_main_process() and run_dir.is_dir() and any(run_dir.iterdir()):
        remove_tree(run_dir)
    set_seed(config.training.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
        run = build_model(config, run_dir, tokenizer)
    else:
        run = build_model(config, run_dir, fresh=True)
        if is_main_process():
            write_run_files(config, run, run_dir)
    features = encode_examples(examples, run.tokenizer, run.method, run.thought_id, config.data.max_length,
                               config.data.drop_long)
    pad_id = run.tokenizer.pad_token_id
    trainer = MethodTrainer(
        model=run.model,
        args=training_arguments(config, run_dir, run.method),
        train_dataset=FeatureDataset(features),
        data_collator=lambda batch: run.method.collate(batch, pad_id),
        method=run.method,
        keep_checkpoints=config.training.save_total_limit,
        callbacks=[JsonlLogCallback(str(run_dir / "log.jsonl"))],
    )
    checkpoint = None
    if resume:
        checkpoint = resume if isinstance(resume, str) else last_complete_checkpoint(str(run_dir))
        if checkpoint is None:
            log.warning("%s: no complete checkpoint yet; starting from the beginning", run_dir)
        else:
            log.info("resuming from %s", checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(str(run_dir))
    return trainer


def write_run_files(config: Config, run: PreparedRun, run_dir: Path) -> None:
    storage.write_text(run_dir / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
    run.tokenizer.save_pretrained(run_dir / "tokenizer")
    info = {"dartlm_version": __version__, "torch": torch.__version__, "method": run.method.name,
            "thought_token_id": run.thought_id}
    storage.write_json(run_dir / RUN_FILE, info)  # last: marks the folder as a run


def resumable(run_dir: Path, config: Config) -> bool:
    """Whether run_dir holds a complete checkpoint of exactly this config (a long benchmark run that was killed)."""
    from dartlm.training.trainer import last_complete_checkpoint

    if not (run_dir / RUN_FILE).is_file() or last_complete_checkpoint(str(run_dir)) is None:
        return False
    try:
        return _training_relevant(load_run_config(run_dir)) == _training_relevant(config)
    except (RunError, ConfigError, OSError, yaml.YAMLError):
        return False


def _training_relevant(config: Config) -> dict:
    """The config without the fields that change how often a run saves or reports, not what it trains."""
    fields = to_dict(config)
    for key in ("save_steps", "save_total_limit", "logging_steps", "progress_bar"):
        fields["training"].pop(key, None)
    return fields


def load_run_config(run_dir: Path) -> Config:
    """The resolved config a run was trained with."""
    return RunFolder(run_dir).config


def load_trained(run_dir: Path, checkpoint: str | None = None, dtype: str | None = None) -> PreparedRun:
    """Rebuild a run's model and load its final weights (or a given checkpoint's), optionally in another dtype."""
    return load_folder(RunFolder(run_dir), checkpoint, dtype)


def final_terms(run_dir: Path) -> dict[str, float]:
    """The last logged value of each loss term of a run."""
    return RunFolder(run_dir).final_terms()
