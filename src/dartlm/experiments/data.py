"""The synthetic task's data of one experiment folder: generated once, with a manifest that refuses a folder of other
settings."""

from __future__ import annotations

import json
from pathlib import Path

from dartlm.data.synthetic import SyntheticTask, generate_splits, write_icot
from dartlm.experiments.settings import DemoSettings, identity
from dartlm.model.tiny import train_tokenizer

DATA_MANIFEST = "dartlm_data.json"
# The settings the generated data depend on; a data folder made under others is never reused.
# (separator: the tokenizer's training text)
DATA_FIELDS = ("task_steps", "max_value", "operations", "n_train", "n_val", "n_test", "vocab_size", "seed",
               "separator")


def data_identity(settings: DemoSettings) -> dict:
    return identity(settings, DATA_FIELDS)


def prepare_data(settings: DemoSettings, data_dir: Path) -> dict[str, list]:
    """Splits written as iCoT text files, and a tokenizer trained on the training text.

    The folder is written whole under a temporary name with its manifest (the settings it was made from, every
    file's sha256) and renamed into place.
    """
    from dartlm.storage import file_hashes, remove_tree, replace_folder, staging_folder, write_json

    task = SyntheticTask(steps=settings.task_steps, max_value=settings.max_value, operations=settings.operations,
                         seed=settings.seed)
    splits = generate_splits(task, settings.n_train, settings.n_val, settings.n_test)
    staged = staging_folder(data_dir)
    try:
        for name, examples in splits.items():
            write_icot(examples, staged / f"{name}.txt")
        texts = [f"{e.question} {e.cot} {settings.separator} {e.answer}" for e in splits["train"]]
        train_tokenizer(texts, vocab_size=settings.vocab_size).save_pretrained(staged / "tokenizer")
        write_json(staged / DATA_MANIFEST, {"settings": data_identity(settings), "files": file_hashes(staged)})
        replace_folder(staged, data_dir)
    finally:
        remove_tree(staged)
    return splits


def check_data(settings: DemoSettings, data_dir: Path) -> str:
    """The fingerprint of an existing data folder made from these settings; refuses any other folder."""
    from dartlm.config import ConfigError
    from dartlm.storage import digest, file_hashes

    path = data_dir / DATA_MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        made_from, listed = manifest["settings"], manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{data_dir}: not a data folder written by this version of dartlm (no readable "
                          f"{DATA_MANIFEST}); use another --output-dir or delete it") from None
    wanted = data_identity(settings)
    differing = sorted(k for k in set(wanted) | set(made_from) if made_from.get(k) != wanted.get(k))
    if differing:
        raise ConfigError(f"{data_dir}: holds data made with other settings ({', '.join(differing)} differ); use "
                          "another --output-dir")
    files = file_hashes(data_dir, exclude=(DATA_MANIFEST,))
    if files != listed:
        changed = sorted(n for n in set(files) | set(listed) if files.get(n) != listed.get(n))
        raise ConfigError(f"{data_dir}: files changed since the data were written ({', '.join(changed[:5])}); "
                          "delete the folder to regenerate it")
    return digest(files)
