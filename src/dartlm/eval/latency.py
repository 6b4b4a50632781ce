"""Latency side by side: several exported models timed on the same questions, interleaved question by question.

Machine noise (another process, frequency scaling, a cold cache) then lands on every model alike, so ratios between
models are meaningful even where absolute times are not. Batch size 1, greedy decoding, each model's own prompt.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Callable

from dartlm.eval.measure import machine_info, stopwatch, summarize


def time_interleaved(labels: list[str], count: int, prepare: Callable[[str, int], Callable[[], Any]], *,
                     warmup: int = 3, device: str = "cpu", progress: Callable = lambda it: it
                     ) -> tuple[dict[str, list[float]], dict[str, list[Any]]]:
    """The one interleaved timer: for each item index, every label in an order that rotates from one index to the
    next (no label always runs first, warm, or last), `prepare(label, index)` untimed and the step it returns timed.
    The first index runs `warmup` extra times per label first (allocator, kernels, caches), untimed.

    Returns ({label: [ms per index]}, {label: [what each step returned]}).
    """
    times: dict[str, list[float]] = {label: [] for label in labels}
    outputs: dict[str, list[Any]] = {label: [] for label in labels}
    for index in progress(range(count)):
        order = labels[index % len(labels):] + labels[: index % len(labels)]
        for label in order:
            step = prepare(label, index)
            for _ in range(warmup if index == 0 else 0):
                step()
            with stopwatch(device) as watch:
                output = step()
            times[label].append(watch["ms"])
            outputs[label].append(output)
    return times, outputs


def interleaved_latency(models: dict[str, Path], questions: list[str], *, warmup: int = 3, threads: int = 2,
                        engine: str = "torch", log=print) -> dict:
    """{"machine", "n", "variants": {label: latency_ms summary, forward_passes, new_tokens, thought_tokens}}:
    models made for one engine (exported ones for torch), timed at batch size 1 on the same questions, interleaved
    (time_interleaved)."""
    import torch

    from dartlm.engines import load_for_engine
    from dartlm.generate import decode_prompts, default_max_new_tokens, prompt_ids

    torch.set_num_threads(threads)
    loaded = {label: load_for_engine(folder, engine, threads=threads) for label, folder in models.items()}
    labels = list(models)
    log(f"latency: {len(questions)} questions x {len(labels)} models, batch size 1, interleaved")

    def prepare(label: str, index: int):
        model, tokenizer, spec = loaded[label]
        prompt = prompt_ids([questions[index]], tokenizer, spec)
        return lambda: (decode_prompts(model, tokenizer, spec, prompt, max_new_tokens=default_max_new_tokens(spec)),
                        spec)

    times, outputs = time_interleaved(labels, len(questions), prepare, warmup=warmup)
    summary = {}
    for label in labels:
        runs = [(generations[0], count, spec) for (generations, count), spec in outputs[label]]
        summary[label] = {
            "latency_ms": summarize(times[label]),
            "forward_passes": statistics.fmean(count for _, count, _ in runs),
            "new_tokens": statistics.fmean(g.num_tokens for g, _, _ in runs),
            # tokens in the model's context that are not the answer: <st>/<pause> tokens, continuous thoughts,
            # and Quiet-STaR's thoughts (every one, though each is dropped after its token)
            "thought_tokens": statistics.fmean(g.thought_tokens or spec.num_thought_tokens for g, _, spec in runs)}
    return {"machine": machine_info("cpu"), "n": len(questions), "variants": summary}


def not_timed(labels: list[str]) -> dict:
    """The same shape as interleaved_latency's result, for a run whose timing is left for a quiet machine."""
    return {"machine": machine_info("cpu"), "n": 0, "variants": {
        label: {"latency_ms": {"median": None, "n": 0}, "forward_passes": None, "new_tokens": None,
                "thought_tokens": None} for label in labels}}
