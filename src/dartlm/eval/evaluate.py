"""`dartlm eval`: accuracy and latency of an exported model on a benchmark, streamed and resumable.

Every finished item is appended to `<output>.jsonl` (flushed and fsynced) before the next batch starts, so an
interrupted evaluation loses at most one batch and resumes where it stopped. The stream's first line records what
is being evaluated; resuming against a different model, benchmark, data file or decoding setting is refused.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dartlm.engines import ENGINES, load_for_engine
from dartlm.eval.answers import score_answer
from dartlm.eval.benchmarks import BenchmarkItem, load_benchmark
from dartlm.eval.measure import machine_info, stopwatch, summarize
from dartlm.generate import decode_prompts, default_max_new_tokens, prompt_ids, without_thoughts
from dartlm.model.export import PromptSpec, model_fingerprint
from dartlm.thinking import thinking_for
from dartlm.storage import OutputLock, sha256_file, write_json, write_text

STREAM_VERSION = 2  # 2: the model is identified by every file's sha256, the data by its whole content


class ResumeMismatchError(ValueError):
    """The existing per-item stream belongs to a different evaluation."""


@dataclass(frozen=True)
class EvalSettings:
    benchmark: str
    data_path: str | None = None
    limit: int | None = None
    batch_size: int = 1
    max_new_tokens: int | None = None
    warmup: int = 2  # untimed items before timing starts
    latency_items: int = 100  # batch-size-1 timing pass when batch_size > 1 (0: skip)
    device: str = "cpu"
    dtype: str = "float32"
    without_thoughts: bool = False  # Quiet-STaR models: answer from the thought-free state alone (an ablation)
    # torch | onnxruntime (a folder written by `dartlm onnx`; CPU, fp32) | llamacpp (a folder written by `dartlm
    # gguf`; CPU, one sequence at a time, in the file's own dtype)
    engine: str = "torch"

    def __post_init__(self):
        from dartlm.config import ConfigError

        for name, value, low in (("batch_size", self.batch_size, 1), ("limit", self.limit, 0),
                                 ("max_new_tokens", self.max_new_tokens, 1), ("warmup", self.warmup, 0),
                                 ("latency_items", self.latency_items, 0)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ConfigError(f"eval: {name.replace('_', '-')} must be an integer >= {low}, got {value!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"eval: dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.engine not in ENGINES:
            raise ConfigError(f"eval: engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.engine != "torch" and (self.device != "cpu" or self.dtype != "float32"):
            raise ConfigError(f"eval: the {self.engine} engine runs the model as exported for it: on cpu, with "
                              "--dtype float32 (the file's own types)")
        if self.engine == "llamacpp" and self.batch_size != 1:
            raise ConfigError("eval: the llamacpp engine decodes one sequence at a time: --batch-size 1")


def stream_header(model_dir: Path, spec: PromptSpec, settings: EvalSettings, max_new_tokens: int,
                  fingerprint: str | None = None) -> dict:
    data = Path(settings.data_path) if settings.data_path else None
    return {
        "type": "header",
        "version": STREAM_VERSION,
        "model": str(model_dir.resolve()),
        # every file of the model (weights, config, tokenizer, prompt), not only a part of one: an export
        # re-made into the same folder is another model
        "model_fingerprint": fingerprint or model_fingerprint(model_dir),
        "benchmark": settings.benchmark,
        "data": str(data.resolve()) if data else None,
        "data_fingerprint": sha256_file(data)[:16] if data and data.is_file() else None,
        "max_new_tokens": max_new_tokens,
        "prompt": asdict(spec),
        "dtype": settings.dtype,
    }


def open_stream(path: Path, header: dict) -> tuple[dict[str, dict], dict[str, float]]:
    """Read what an earlier run finished: (item records by id, bs-1 latencies by id). Creates the file if new."""
    if not path.exists() or path.stat().st_size == 0:
        _append(path, [header])
        return {}, {}
    records, latencies = {}, {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = handle.read().splitlines()
    try:
        first = json.loads(lines[0])
        assert isinstance(first, dict) and first.get("type") == "header"
    except (ValueError, AssertionError, RecursionError, IndexError):
        raise ResumeMismatchError(f"{path}:1: not a dartlm eval stream (no header); pass another --output or "
                                  "delete the file") from None
    keys = [k for k in header if k != "type"]
    differing = [k for k in keys if first.get(k) != header[k]]
    if differing:
        raise ResumeMismatchError(
            f"{path}: holds results of a different evaluation ({', '.join(differing)} differ); "
            "pass another --output or delete the file to start over"
        )
    for number, line in enumerate(lines[1:], start=2):
        try:
            record = json.loads(line)
            kind = record["type"]
            if kind == "item":
                records[record["id"]] = record
            elif kind == "latency":
                latencies[record["id"]] = float(record["ms"])
        except (ValueError, KeyError, TypeError, RecursionError):
            if number < len(lines):
                raise ResumeMismatchError(f"{path}:{number}: corrupt record; delete the file to start over") from None
            # The last line was cut by a kill: drop it, so the item is redone and appends stay well-formed.
            write_text(path, "\n".join(lines[:-1]) + "\n")
            break
    return records, latencies


def _append(path: Path, records: list[dict]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def score_record(item: BenchmarkItem, generation, spec: PromptSpec) -> dict:
    # Answer-decoding methods were prompted with the separator: score the text as if it were written out.
    text = thinking_for(spec).scored_text(generation.text, spec)
    score = score_answer(item.kind, text, item.target, question=item.question, separator=spec.separator)
    return {
        "type": "item", "id": item.id, "target": item.target, "output": generation.text,
        "strict": score.strict, "flexible": score.flexible,
        "strict_prediction": score.strict_prediction, "flexible_prediction": score.flexible_prediction,
        "new_tokens": generation.num_tokens,
        "thought_tokens": generation.thought_tokens,  # Quiet-STaR: thought before each token, then dropped
    }


def evaluate(model_dir: Path, settings: EvalSettings, output: Path, *, progress: bool = True) -> dict:
    """Evaluate, stream per-item records to output.with_suffix('.jsonl'), write the summary JSON to output."""
    model_dir = Path(model_dir)
    fingerprint = model_fingerprint(model_dir)  # before loading: a folder changed since its export is refused
    spec = PromptSpec.load(model_dir)
    if settings.without_thoughts:
        spec = without_thoughts(spec)
    items = load_benchmark(settings.benchmark, settings.data_path, limit=settings.limit)
    max_new = settings.max_new_tokens or default_max_new_tokens(spec)
    header = stream_header(model_dir, spec, settings, max_new, fingerprint)
    stream = output.with_suffix(".jsonl")
    if stream.is_file() and stream.stat().st_size:
        open_stream(stream, header)  # a stream of another evaluation is refused before any model loads
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[settings.dtype]
    model, tokenizer, _ = load_for_engine(model_dir, settings.engine, device=settings.device, dtype=dtype)
    output.parent.mkdir(parents=True, exist_ok=True)
    with OutputLock(output, "evaluation output"):
        done, latencies = open_stream(stream, header)
        results = _evaluate(model_dir, fingerprint, settings, output, model, tokenizer, spec, items, max_new,
                            progress, stream, done, latencies)
    return results


def _evaluate(model_dir, fingerprint, settings, output, model, tokenizer, spec, items, max_new, progress, stream, done,
              latencies) -> dict:
    prompts = dict(zip((i.id for i in items), prompt_ids([i.question for i in items], tokenizer, spec)))

    def run(batch_items):
        return decode_prompts(model, tokenizer, spec, [prompts[i.id] for i in batch_items], max_new_tokens=max_new)

    todo = [i for i in items if i.id not in done]
    timed_inline = settings.batch_size == 1
    if todo and (timed_inline or settings.latency_items):
        for item in todo[: settings.warmup] or items[: settings.warmup]:
            run([item])  # warm-up: allocator, kernels, caches
    batch_ms: list[float] = []
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=f"eval {settings.benchmark}", disable=not progress)
    for start in range(0, len(todo), settings.batch_size):
        chunk = todo[start : start + settings.batch_size]
        with stopwatch(settings.device) as watch:
            generations, passes = run(chunk)
        batch_ms.append(watch["ms"])
        records = [dict(score_record(i, g, spec), prompt_tokens=len(prompts[i.id]), forward_passes=passes)
                   for i, g in zip(chunk, generations)]
        if timed_inline:
            records[0]["ms"] = watch["ms"]
            latencies[chunk[0].id] = watch["ms"]
        _append(stream, records)
        done.update((r["id"], r) for r in records)
        bar.update(len(chunk))
    bar.close()

    if not timed_inline and settings.latency_items:
        pending = [i for i in items[: settings.latency_items] if i.id not in latencies]
        for item in tqdm(pending, desc="latency (batch size 1)", disable=not progress):
            with stopwatch(settings.device) as watch:
                run([item])
            latencies[item.id] = watch["ms"]
            _append(stream, [{"type": "latency", "id": item.id, "ms": watch["ms"]}])

    results = summarize_results(items, done, latencies, spec, settings, model_dir, batch_ms)
    results["model_fingerprint"] = fingerprint
    write_json(output, results)
    return results


def summarize_results(items, done, latencies, spec, settings, model_dir, batch_ms) -> dict:
    records = [done[i.id] for i in items]
    n = len(records)
    throughput = None
    if batch_ms and settings.batch_size > 1:
        throughput = {"batch_size": settings.batch_size, "items_per_s": 1000.0 * sum(
            min(settings.batch_size, n - k * settings.batch_size) for k in range(len(batch_ms))) / sum(batch_ms)}
    return {
        "model": str(Path(model_dir).resolve()),
        "method": spec.method,
        "num_thought_tokens": spec.num_thought_tokens,
        "benchmark": settings.benchmark,
        "data": settings.data_path,
        "n": n,
        "accuracy": {
            "strict": sum(r["strict"] for r in records) / n if n else 0.0,
            "flexible": sum(r["flexible"] for r in records) / n if n else 0.0,
        },
        "latency_ms": {**summarize([latencies[i.id] for i in items if i.id in latencies]), "batch_size": 1},
        "new_tokens": summarize([r["new_tokens"] for r in records]),
        "thought_tokens": summarize([r.get("thought_tokens", 0) for r in records]),
        "prompt_tokens": summarize([r["prompt_tokens"] for r in records]),
        "throughput": throughput,
        "settings": asdict(settings),
        "machine": machine_info(settings.device),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
