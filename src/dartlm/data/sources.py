"""Where training data comes from: a local file (any reader format) or, for users online, a hub dataset."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dartlm.data.example import Example
from dartlm.data.readers import DataError, ReadReport, read_examples
from dartlm.data.synthetic import SPEC_PREFIX, load_synthetic

log = logging.getLogger(__name__)


def load_examples(source: str, *, format: str = "auto", omit_last_step: bool = False, skip_invalid: bool = False,
                  numeric_answers: bool = False, split: str = "train") -> list[Example]:
    """Examples from a local file, a generated synthetic task (`synthetic:train?steps=3&n=2000`), or a hub dataset
    named `owner/name` (fields question, cot/steps, answer)."""
    if not source:
        raise DataError("no data given: set data.train_path to a local .txt/.jsonl/.json file")
    if source.startswith(SPEC_PREFIX):
        try:
            examples = load_synthetic(source)
        except ValueError as err:
            raise DataError(f"{source}: {err}") from None
        return [e.without_last_step() for e in examples] if omit_last_step else examples
    if Path(source).exists() or not _looks_like_hub_name(source):
        report = ReadReport(source)
        examples = read_examples(source, format, omit_last_step=omit_last_step, skip_invalid=skip_invalid,
                                 answer_must_be_numeric=numeric_answers, report=report)
        log.info(report.summary())
        return examples
    return _hub_examples(source, split, omit_last_step)


def _looks_like_hub_name(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.endswith((".txt", ".json", ".jsonl"))


def _hub_examples(name: str, split: str, omit_last_step: bool) -> list[Example]:
    hint = "download it where the hub is reachable and pass the local file instead (data.train_path=/path/to/train.jsonl)"
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise DataError(f"{name}: not a local file, and the hub is off (HF_HUB_OFFLINE=1); {hint}")
    try:
        import datasets
    except ImportError:
        raise DataError(f"{name}: reading hub datasets needs `pip install datasets`; or {hint}") from None
    try:
        rows = datasets.load_dataset(name, split=split)
    except Exception as err:  # network errors come in many types
        raise DataError(f"{name}: could not load from the hub ({type(err).__name__}: {err}); {hint}") from None
    examples = []
    for index, row in enumerate(rows):
        where = f"{name}[{split}]:{index}"
        steps = row.get("steps") or str(row.get("cot", "")).split()
        example = Example(str(row["question"]).strip(), tuple(steps), str(row["answer"]).strip(), where)
        examples.append(example.without_last_step() if omit_last_step else example)
    return examples
