"""An lm-evaluation-harness task that scores an exported model with its own prompt, on a local benchmark file.

lm-eval feeds a model text, not token ids, so each document carries the prompt as a string (the question, C
thought tokens and the separator for DART and PauseFT; the question alone for CoT), and every prompt is checked to
tokenise, as lm-eval's `hf` model tokenises it, to exactly the ids `dartlm eval` feeds the model. Scoring is
dartlm's strict and flexible reading of the answer (`lm_eval_tasks/utils.py`). Continuous-thought models (Coconut,
CODI) cannot be prompted with text and are refused.

    dartlm lm-eval-task MODEL --benchmark gsm8k --data-path test.txt --output tasks/
    lm_eval --model hf --model_args pretrained=MODEL --tasks dartlm_gsm8k --include_path tasks/ --batch_size 1
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from transformers import AutoTokenizer

from dartlm.config import ConfigError
from dartlm.eval.benchmarks import load_benchmark
from dartlm.generate import default_max_new_tokens, prompt_ids
from dartlm.model.export import PromptSpec
from dartlm.thinking import PromptNotExpressibleError, thinking_for
from dartlm.storage import write_text

TASKS_DIR = Path(__file__).resolve().parent.parent / "lm_eval_tasks"
BASE_TASK = TASKS_DIR / "dartlm_task.yaml"
TASK_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class TaskFiles:
    name: str
    yaml: Path
    data: Path
    items: int


def prompt_text(question: str, spec: PromptSpec) -> str:
    """The inference prompt as text; `prompt_ids` is the reference it must tokenise to."""
    return thinking_for(spec).prompt_text(question, spec)


def write_lm_eval_task(model_dir: Path, benchmark: str, data_path: Path, out_dir: Path, *,
                       limit: int | None = None, name: str | None = None) -> TaskFiles:
    """Write <out_dir>/<name>.yaml and its data file <name>.jsonl; returns what was written."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    name = name or f"dartlm_{benchmark.replace('-', '_')}"
    if not TASK_NAME.fullmatch(name):
        raise ConfigError(f"--name {name!r}: a task name is letters, digits, '_', '-' and '.' and does not start "
                          "with '.' (it names files inside --output)")
    spec = PromptSpec.load(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    items = load_benchmark(benchmark, data_path, limit=limit)
    docs = []
    for item, expected in zip(items, prompt_ids([i.question for i in items], tokenizer, spec)):
        text = prompt_text(item.question, spec)
        # lm-eval's hf model encodes with the tokenizer's defaults (its own bos, if any).
        ids = tuple(tokenizer(text)["input_ids"])
        if ids != tuple(expected):
            raise PromptNotExpressibleError(
                f"{item.id}: the prompt written as text tokenises to {len(ids)} ids that differ from the "
                f"{len(expected)} dartlm feeds the model (first difference at position "
                f"{next((k for k, (a, b) in enumerate(zip(ids, expected)) if a != b), min(len(ids), len(expected)))})"
                "; lm-eval would not score the model on its own prompt")
        docs.append({"id": item.id, "question": item.question, "prompt": text, "target": item.target,
                     "kind": item.kind, "separator": spec.separator, "decode": spec.decode,
                     "scored_prefix": thinking_for(spec).scored_text("", spec)})
    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / f"{name}.jsonl"
    write_text(data, "".join(json.dumps(d) + "\n" for d in docs))
    task = {
        "include": str(BASE_TASK),
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
        "generation_kwargs": {"until": [], "do_sample": False, "max_gen_toks": default_max_new_tokens(spec)},
    }
    header = (f"# Written by `dartlm lm-eval-task` for {model_dir} ({spec.method}, C = {spec.num_thought_tokens}) "
              f"on {len(docs)} items of {benchmark} from {data_path}.\n")
    path = out_dir / f"{name}.yaml"
    write_text(path, header + yaml.safe_dump(task, sort_keys=False))
    return TaskFiles(name, path, data, len(docs))
