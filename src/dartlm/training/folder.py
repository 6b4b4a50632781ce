"""A training run's folder as one object: its config, tokenizer, trained weights and log, each read once.

    run/
      dartlm_run.json       written when the run starts (what made it)
      config.yaml           the resolved config
      tokenizer/            the tokenizer, with the method's special tokens
      trainable.safetensors the trained weights (LoRA, REM, method modules), once the run has finished
      checkpoint-N/         resumable checkpoints
      log.jsonl             one JSON record per logging step (loss terms, teacher_spread, ...)
"""

from __future__ import annotations

import json
import logging
from functools import cached_property
from pathlib import Path

import yaml
from transformers import AutoTokenizer

from dartlm.config import Config, from_dict

log = logging.getLogger(__name__)

RUN_FILE = "dartlm_run.json"
LOG_FILE = "log.jsonl"
# Logged terms the model card and the comparisons report: the loss, DART's/CODI's terms with teacher_spread,
# Quiet-STaR's and FQS-NTP's terms.
REPORTED_TERMS = ("loss", "improvement", "mix_weight", "rewarded")
REPORTED_PREFIXES = ("loss_", "teacher_")


class RunError(RuntimeError):
    """The run folder is missing, not a dartlm run, or would be overwritten."""


class RunFolder:
    def __init__(self, path: Path | str):
        self.path = Path(path)

    @cached_property
    def config(self) -> Config:
        """The resolved config the run was trained with."""
        if not (self.path / RUN_FILE).is_file():
            raise RunError(f"{self.path}: not a dartlm run folder (no {RUN_FILE})")
        path = self.path / "config.yaml"
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise RunError(f"{path}: cannot read the run's config: {str(err).splitlines()[0]}") from None
        return from_dict(Config, raw, str(path)).validate(str(path))

    @cached_property
    def method(self):
        from dartlm.methods import get_method

        return get_method(self.config.method)

    @cached_property
    def tokenizer(self):
        return AutoTokenizer.from_pretrained(self.path / "tokenizer")

    def log_records(self) -> list[dict]:
        """Every record of the training log; a line cut by a kill is skipped with a warning."""
        path = self.path / LOG_FILE
        if not path.is_file():
            return []
        records = []
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: not a log record (cut by a kill?); skipped", path, number)
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def final_terms(self) -> dict[str, float]:
        """The last logged value of each reported loss term."""
        last: dict[str, float] = {}
        for record in self.log_records():
            last.update({k: v for k, v in record.items() if k in REPORTED_TERMS or k.startswith(REPORTED_PREFIXES)})
        return last
