"""`dartlm bench`: the cost claims, measured side by side in one run.

inference: per-sample latency (batch size 1) of the merged DART model against PauseFT, No-CoT and CoT on the same
    questions and base model, interleaved question by question so that machine noise hits every variant alike.
    Decode lengths are pinned to what a trained model would write (the reference answer, or the reference CoT and
    answer for CoT), so an untrained model's babble does not decide the comparison.
training: step time and FLOPs of dart, cot and nocot at the same batch (interleaved), and peak memory of each in a
    fresh process.
"""

from __future__ import annotations

import copy
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from dartlm.config import Config, MethodConfig, to_dict
from dartlm.data.example import Example
from dartlm.data.layout import PromptFormat, segment_example
from dartlm.eval.latency import time_interleaved
from dartlm.eval.measure import PeakMemory, count_flops, machine_info, summarize
from dartlm.generate import decode_prompts, prompt_ids
from dartlm.methods import get_method
from dartlm.model.adapters import PAUSE_TOKEN, ST_TOKEN, add_special_token, attach_adapters, ensure_pad_token
from dartlm.model.export import PromptSpec, merge_adapters
from dartlm.model.loading import load_base_model, load_tokenizer
from dartlm.thinking import thinking_for
from dartlm.training.prepare import lora_settings, rem_settings


@dataclass
class Variant:
    name: str
    model: torch.nn.Module
    spec: PromptSpec
    tokenizer: object  # each variant has its own, so that each model gains only its own special token


def _randomise_adapters(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-zero LoRA/REM weights, as after training (zero-initialised factors would make the merge trivial)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.01)


def inference_variants(config: Config, num_thoughts: int, *, include_unmerged: bool = True):
    """(tokenizer, variants) built from one base model: nocot, cot, pause, dart (merged), dart (adapters live)."""
    tokenizer = load_tokenizer(config.model)
    ensure_pad_token(tokenizer)
    base = load_base_model(config.model).eval()
    for p in base.parameters():
        p.requires_grad_(False)
    sep = config.method.separator

    def spec(method: str) -> PromptSpec:  # each method's own prompt, as its export would record it
        return get_method(MethodConfig(name=method, num_thought_tokens=num_thoughts, separator=sep)).prompt_spec()

    pause_model, pause_tokenizer = copy.deepcopy(base), copy.deepcopy(tokenizer)
    add_special_token(pause_model, pause_tokenizer, PAUSE_TOKEN)
    dart_method = get_method(MethodConfig(name="dart", num_thought_tokens=num_thoughts, separator=sep))
    adapter_model, dart_tokenizer = copy.deepcopy(base), copy.deepcopy(tokenizer)
    add_special_token(adapter_model, dart_tokenizer, ST_TOKEN)
    adapter_model = attach_adapters(adapter_model, lora_settings(config), rem_settings(config, dart_method))
    _randomise_adapters(adapter_model)
    adapter_model.eval()
    variants = [
        Variant("nocot", base, spec("nocot"), tokenizer),
        Variant("pause", pause_model.eval(), spec("pause"), pause_tokenizer),
    ]
    dart_spec = spec("dart")
    if include_unmerged:
        variants.append(Variant("dart (adapters, unmerged)", adapter_model, dart_spec, dart_tokenizer))
        adapter_model = copy.deepcopy(adapter_model)
    variants.append(Variant("dart (merged)", merge_adapters(adapter_model).eval(), dart_spec, dart_tokenizer))
    variants.append(Variant("cot", base, spec("cot"), tokenizer))
    return tokenizer, variants


def pinned_lengths(example: Example, tokenizer, separator: str) -> dict[str, int]:
    """Tokens a trained model would write: the answer (+eos), or the CoT, separator and answer (+eos)."""
    seg = segment_example(example, tokenizer, PromptFormat(separator=separator))
    return {"answer": len(seg.answer), "cot": len(seg.cot) + len(seg.separator) + len(seg.answer)}


def pinned_length(lengths: dict[str, int], spec: PromptSpec) -> int:
    return lengths["cot" if thinking_for(spec).writes_chain else "answer"]


def bench_inference(config: Config, examples: list[Example], *, num_thoughts: int = 20, warmup: int = 3,
                    device: str = "cpu", progress: bool = True) -> dict:
    """Per-sample latency of every variant on the same questions, interleaved; ratios against merged DART."""
    from tqdm.auto import tqdm

    tokenizer, variants = inference_variants(config, num_thoughts)
    for v in variants:
        v.model.to(device)
    by_name = {v.name: v for v in variants}

    def prepare(name: str, index: int):
        v, example = by_name[name], examples[index]
        (prompt,) = prompt_ids([example.question], v.tokenizer, v.spec)
        length = pinned_length(pinned_lengths(example, tokenizer, config.method.separator), v.spec)
        return lambda: (len(prompt), decode_prompts(v.model, v.tokenizer, v.spec, [prompt], max_new_tokens=length,
                                                    min_new_tokens=length)[0][0].num_tokens)

    times, outputs = time_interleaved(list(by_name), len(examples), prepare, warmup=warmup, device=device,
                                      progress=lambda it: tqdm(it, desc="bench inference", disable=not progress))
    prompt_tokens = {name: [p for p, _ in runs] for name, runs in outputs.items()}
    new_tokens = {name: [n for _, n in runs] for name, runs in outputs.items()}
    summary = {
        name: {"latency_ms": summarize(ms), "prompt_tokens": statistics.fmean(prompt_tokens[name]),
               "new_tokens": statistics.fmean(new_tokens[name])}
        for name, ms in times.items()
    }
    for v in variants:  # FLOPs and working memory of one sample: the first question, at its pinned length
        summary[v.name].update(sample_cost(v, examples[0], config.method.separator, device))
    dart = "dart (merged)"

    def paired(other: str) -> dict:
        ratios = [a / b for a, b in zip(times[other], times[dart])]
        return {"median_of_ratios": statistics.median(ratios),
                "ratio_of_medians": summary[other]["latency_ms"]["median"] / summary[dart]["latency_ms"]["median"]}

    return {
        "variants": summary,
        "ratios": {
            "dart_vs_pause": _invert(paired("pause")),
            "dart_vs_nocot": _invert(paired("nocot")),
            "cot_vs_dart": paired("cot"),
            "unmerged_vs_merged_dart": paired("dart (adapters, unmerged)"),
        },
        "prompt_token_ratio_dart_vs_nocot": summary[dart]["prompt_tokens"] / summary["nocot"]["prompt_tokens"],
        "num_thought_tokens": num_thoughts,
        "n": len(examples),
    }


def sample_cost(variant: Variant, example: Example, separator: str, device: str) -> dict:
    """FLOPs (eager attention, so attention counts) and peak working memory above the loaded models of one sample."""
    tokenizer = variant.tokenizer
    (prompt,) = prompt_ids([example.question], tokenizer, variant.spec)
    lengths = pinned_lengths(example, tokenizer, separator)
    length = pinned_length(lengths, variant.spec)

    def run():
        decode_prompts(variant.model, tokenizer, variant.spec, [prompt], max_new_tokens=length, min_new_tokens=length)

    previous = variant.model.config._attn_implementation
    variant.model.set_attn_implementation("eager")
    try:
        flops = count_flops(run)
    finally:
        variant.model.set_attn_implementation(previous)
    meter = PeakMemory(device)
    meter.reset()
    before = meter.peak_bytes()  # right after a reset: the current footprint
    run()
    return {"flops_per_sample": flops, "working_memory_bytes": max(meter.peak_bytes() - before, 0),
            "memory_kind": meter.kind}


def _invert(ratio: dict) -> dict:
    """other/dart -> dart/other."""
    return {key: 1.0 / value for key, value in ratio.items()}


def _training_setup(config: Config, method_name: str, examples: list[Example], batch_size: int, device: str):
    """(model, method, fixed batch, optimizer) for one method on a fresh copy of the base model."""
    method_config = copy.deepcopy(config.method)
    method_config.name = method_name
    method = get_method(method_config)
    tokenizer = load_tokenizer(config.model)
    base = load_base_model(config.model)
    if hasattr(base, "set_attn_implementation"):
        base.set_attn_implementation("eager")  # so that FlopCounterMode sees the attention matmuls
    from dartlm.training.prepare import prepare_model

    model, thought_id = prepare_model(base, tokenizer, config, method)
    model.to(device).train()
    features = [method.encode(e, tokenizer, thought_id) for e in examples[:batch_size]]
    batch = _to_device(method.collate(features, tokenizer.pad_token_id), device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    return model, method, batch, optimizer


def _to_device(batch, device):
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch.to(device) if torch.is_tensor(batch) else batch


def _train_step(model, method, batch, optimizer) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss, _ = method.loss(model, batch, backward=lambda part: part.backward())
    loss.backward()
    optimizer.step()
    return loss.item()


def bench_training(config: Config, examples: list[Example], *, methods=("dart", "cot", "nocot"), batch_size: int = 4,
                   steps: int = 10, warmup: int = 2, device: str = "cpu", memory: bool = True,
                   progress: bool = True) -> dict:
    """Step time (interleaved) and FLOPs per step in this process; peak memory per method in a fresh process."""
    from tqdm.auto import tqdm

    setups = {name: _training_setup(config, name, examples, batch_size, device) for name in methods}
    flops = {name: count_flops(lambda s=s: _train_step(*s)) for name, s in setups.items()}
    times, _ = time_interleaved(list(methods), steps, lambda name, _: lambda s=setups[name]: _train_step(*s),
                                warmup=warmup, device=device,
                                progress=lambda it: tqdm(it, desc="bench training", disable=not progress))
    tokens = {name: int(sum(_count_tokens(s[2]))) for name, s in setups.items()}
    setups.clear()  # free the models before the memory subprocesses
    result = {
        name: {"step_ms": summarize(times[name]), "flops_per_step": flops[name], "tokens_per_step": tokens[name]}
        for name in methods
    }
    if memory:
        for name in methods:
            result[name]["peak_memory"] = _memory_in_subprocess(config, name, examples, batch_size, device)
    ratios = {}
    for other in methods:
        if other == "dart":
            continue
        ratios[f"dart_vs_{other}"] = {
            "step_time": result["dart"]["step_ms"]["median"] / result[other]["step_ms"]["median"],
            "flops": result["dart"]["flops_per_step"] / result[other]["flops_per_step"],
        }
        if memory:
            mine, theirs = result["dart"]["peak_memory"], result[other]["peak_memory"]
            ratios[f"dart_vs_{other}"]["peak_memory"] = mine["peak_bytes"] / theirs["peak_bytes"]
            ratios[f"dart_vs_{other}"]["peak_memory_above_loaded"] = mine["above_loaded_bytes"] / theirs["above_loaded_bytes"]
    return {"methods": result, "ratios": ratios, "batch_size": batch_size, "steps": steps}


def _count_tokens(batch) -> list[int]:
    if "attention_mask" in batch:
        return [int(batch["attention_mask"].sum())]
    return [int(b["attention_mask"].sum()) for b in batch.values()]


def measure_training_memory(config: Config, method: str, examples: list[Example], batch_size: int, device: str,
                            steps: int = 3) -> dict:
    """Peak memory of a few training steps, relative to the process with the model loaded."""
    meter = PeakMemory(device)
    setup = _training_setup(config, method, examples, batch_size, device)
    meter.reset()
    loaded = meter.peak_bytes()
    for _ in range(steps):
        _train_step(*setup)
    peak = meter.peak_bytes()
    return {"peak_bytes": peak, "loaded_bytes": loaded, "above_loaded_bytes": peak - loaded, "kind": meter.kind}


def _memory_in_subprocess(config: Config, method: str, examples: list[Example], batch_size: int, device: str) -> dict:
    """A fresh interpreter per method: a process's peak never shrinks, so methods must not share one."""
    payload = json.dumps({
        "config": to_dict(config), "method": method, "batch_size": batch_size, "device": device,
        "examples": [[e.question, list(e.steps), e.answer] for e in examples[:batch_size]],
    })
    result = subprocess.run([sys.executable, "-m", "dartlm.experiments.bench"], input=payload, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"memory measurement of {method} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _memory_worker() -> None:
    from dartlm.config import from_dict

    request = json.loads(sys.stdin.read())
    config = from_dict(Config, request["config"], "bench request")
    examples = [Example(q, tuple(s), a) for q, s, a in request["examples"]]
    print(json.dumps(measure_training_memory(config, request["method"], examples, request["batch_size"],
                                             request["device"])))


def inference_table(result: dict) -> str:
    lines = ["| variant | median ms | p90 ms | mean ms | prompt tokens | new tokens | GFLOPs (q1) | working MB (q1) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, v in result["variants"].items():
        lat = v["latency_ms"]
        lines.append(f"| {name} | {lat['median']:.1f} | {lat['p90']:.1f} | {lat['mean']:.1f} | "
                     f"{v['prompt_tokens']:.1f} | {v['new_tokens']:.1f} | {v['flops_per_sample'] / 1e9:.2f} | "
                     f"{v['working_memory_bytes'] / 2**20:.1f} |")
    lines.append("")
    lines.append("| ratio | median of per-question ratios | ratio of medians |")
    lines.append("|---|---|---|")
    for name, r in result["ratios"].items():
        lines.append(f"| {name} | {r['median_of_ratios']:.3f} | {r['ratio_of_medians']:.3f} |")
    lines.append(f"| prompt tokens, dart vs nocot | {result['prompt_token_ratio_dart_vs_nocot']:.3f} | |")
    return "\n".join(lines)


def training_table(result: dict) -> str:
    lines = ["| method | median step ms | GFLOPs per step | tokens per step | peak memory MB | above loaded MB |",
             "|---|---|---|---|---|---|"]
    for name, r in result["methods"].items():
        memory = r.get("peak_memory", {})
        peak = f"{memory['peak_bytes'] / 2**20:.0f}" if memory else "—"
        above = f"{memory['above_loaded_bytes'] / 2**20:.0f}" if memory else "—"
        lines.append(f"| {name} | {r['step_ms']['median']:.0f} | {r['flops_per_step'] / 1e9:.1f} | "
                     f"{r['tokens_per_step']} | {peak} | {above} |")
    lines.append("")
    for name, r in result["ratios"].items():
        lines.append(f"- {name}: " + ", ".join(f"{k} {v:.2f}x" for k, v in r.items()))
    return "\n".join(lines)


def run_bench(kind: str, *, config: str | None, overrides, model: str | None, benchmark: str, data_path: str,
              limit: int, num_thoughts: int, batch_size: int, steps: int, device: str, output: str | None,
              settings: dict) -> dict:
    """`dartlm bench inference|training`: measure, write <output>.json and .md, print the table."""
    from dartlm.config import load_config
    from dartlm.data.sources import load_examples
    from dartlm.eval.benchmarks import load_benchmark

    if config:
        run_config = load_config(config, overrides)
    else:
        run_config = Config()  # the paper's LoRA and REM sizes
        run_config.model.name_or_path = model
        run_config.validate("--model")
    out = Path(output or f"benchmarks/results/bench-{kind}.json")
    if kind == "inference":
        items = load_benchmark(benchmark, data_path, limit=limit)
        examples = [Example(i.question, i.reference_steps, i.target) for i in items]
        result = bench_inference(run_config, examples, num_thoughts=num_thoughts, device=device)
        table = inference_table(result)
    else:
        examples = load_examples(data_path, omit_last_step=True)
        result = bench_training(run_config, examples, batch_size=batch_size, steps=steps, device=device)
        table = training_table(result)
    result["settings"] = settings
    write_result(result, out, table, device)
    print(table)
    print(f"results: {out} and {out.with_suffix('.md')}")
    return result


def write_result(result: dict, output: Path, table: str, device: str) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    result = {**result, "machine": machine_info(device)}
    output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    output.with_suffix(".md").write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    _memory_worker()
