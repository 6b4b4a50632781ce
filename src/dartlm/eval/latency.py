"""Latency side by side: several exported models timed on the same questions, interleaved question by question.

Machine noise (another process, frequency scaling, a cold cache) then lands on every model alike, so ratios between
models are meaningful even where absolute times are not. Batch size 1, greedy decoding, each model's own prompt.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from dartlm.eval.measure import machine_info, stopwatch, summarize


def interleaved_latency(models: dict[str, Path], questions: list[str], *, warmup: int = 3, threads: int = 2,
                        log=print) -> dict:
    """{"machine", "n", "variants": {label: latency_ms summary, forward_passes, new_tokens, thought_tokens}}.

    The order of the models rotates from one question to the next, so no model always runs first or last.
    """
    import torch

    from dartlm.generate import decode_prompts, default_max_new_tokens, load_exported, prompt_ids

    torch.set_num_threads(threads)
    loaded = {label: load_exported(folder) for label, folder in models.items()}
    labels = list(models)
    times: dict[str, list[float]] = {label: [] for label in labels}
    passes: dict[str, list[int]] = {label: [] for label in labels}
    tokens: dict[str, list[int]] = {label: [] for label in labels}
    thoughts: dict[str, list[int]] = {label: [] for label in labels}
    log(f"latency: {len(questions)} questions x {len(labels)} models, batch size 1, interleaved")
    for index, question in enumerate(questions):
        order = labels[index % len(labels):] + labels[: index % len(labels)]
        for label in order:
            model, tokenizer, spec = loaded[label]
            prompt = prompt_ids([question], tokenizer, spec)
            for _ in range(warmup + 1 if index == 0 else 1):
                with stopwatch("cpu") as watch:
                    generations, count = decode_prompts(model, tokenizer, spec, prompt,
                                                        max_new_tokens=default_max_new_tokens(spec))
            times[label].append(watch["ms"])
            passes[label].append(count)
            tokens[label].append(generations[0].num_tokens)
            # tokens in the model's context that are not the answer: <st>/<pause> tokens, continuous thoughts,
            # and Quiet-STaR's thoughts (every one, though each is dropped after its token)
            thoughts[label].append(generations[0].thought_tokens or spec.num_thought_tokens)
    return {"machine": machine_info("cpu"), "n": len(questions), "variants": {
        label: {"latency_ms": summarize(times[label]), "forward_passes": statistics.fmean(passes[label]),
                "new_tokens": statistics.fmean(tokens[label]), "thought_tokens": statistics.fmean(thoughts[label])}
        for label in labels}}


def not_timed(labels: list[str]) -> dict:
    """The same shape as interleaved_latency's result, for a run whose timing is left for a quiet machine."""
    return {"machine": machine_info("cpu"), "n": 0, "variants": {
        label: {"latency_ms": {"median": None, "n": 0}, "forward_passes": None, "new_tokens": None,
                "thought_tokens": None} for label in labels}}
