"""Where a DART training step goes, on the demo's model: FLOPs and CPU time of one step of each method.

DART runs the CoT pathway (teacher, REM off) and the ST pathway (student, REM on) on every step, so its natural cost
is a CoT step plus a PauseFT step (same prompt shape as the ST pathway), plus REM. Measured in one process, one
thread, the methods interleaved step by step on a fixed batch of 32 from the demo's training data, the shipped base
with the demo's LoRA and REM: FLOPs (torch's FlopCounterMode, eager attention so it sees the attention matmuls) and
the thread's CPU time per step (time.thread_time: less sensitive to other processes on the machine than wall time;
medians), then torch.profiler's split of three DART steps by operator.

    python benchmarks/dart_step_cost.py --output benchmarks/results/dart-step-cost.json
    python benchmarks/dart_step_cost.py --set base_model=smollm2-135m base_steps=0 batch_size=8 --steps 0 \
        --output benchmarks/results/dart-step-cost-smollm2.json

`--set` takes the demo settings of `dartlm compare` (another base model, batch size, LoRA); `--steps 0` counts FLOPs
only, which do not depend on what else the machine is running, so it can be measured beside long jobs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dartlm.experiments.bench import _train_step, _training_setup, count_flops
from dartlm.data.sources import load_examples
from dartlm.experiments.data import prepare_data
from dartlm.experiments.settings import DemoSettings, apply_settings, method_config, shared_base
from dartlm.eval.measure import machine_info

METHODS = ("nocot", "cot", "pause", "dart")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="benchmarks/results/dart-step-cost.json")
    parser.add_argument("--steps", type=int, default=12, help="steps timed per method; 0: FLOPs only")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="demo settings, as in compare")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = apply_settings(DemoSettings(), args.set)
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data"
        prepare_data(settings, data)
        base = shared_base(settings, log=lambda *_: None)
        examples = load_examples(str(data / "train.txt"), omit_last_step=settings.omit_last_step)
        setups = {m: _training_setup(method_config(settings, m, data, Path(folder) / "run", base, 10), m, examples,
                                     settings.batch_size, "cpu") for m in METHODS}
    flops = {m: count_flops(lambda s=s: _train_step(*s)) for m, s in setups.items()}
    result = {"settings": args.set, "batch_size": settings.batch_size, "threads": 1, "steps_timed": args.steps,
              "gflop_per_step": {m: flops[m] / 1e9 for m in METHODS},
              "dart_flops_over_cot_plus_pause": flops["dart"] / (flops["cot"] + flops["pause"]),
              "dart_flops_over_cot": flops["dart"] / flops["cot"], "machine": machine_info("cpu")}
    lines = ["| method | GFLOP per step |" + (" CPU ms per step (median, 1 thread) |" if args.steps else ""),
             "|---|---|" + ("---|" if args.steps else "")]
    if args.steps:
        result.update(timed(setups, args.steps, flops))
        median = result["cpu_ms_per_step_median"]
        lines += [f"| {m} | {flops[m] / 1e9:.1f} | {median[m]:.0f} |" for m in METHODS]
        r = result["dart_over_cot_plus_pause"]
        lines += ["", f"DART / (CoT + PauseFT): FLOPs {r['flops']:.3f}, CPU time {r['cpu_time']:.3f}. DART's step, "
                      "by operator (self CPU share): " + ", ".join(
                          f"{k} {100 * v:.0f} %" for k, v in list(result["dart_profile_self_cpu_share"].items())[:5])]
    else:
        lines += [f"| {m} | {flops[m] / 1e9:.1f} |" for m in METHODS]
        lines += ["", f"DART / (CoT + PauseFT): FLOPs {result['dart_flops_over_cot_plus_pause']:.3f}; DART / CoT: "
                      f"{result['dart_flops_over_cot']:.3f}."]
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def timed(setups: dict, steps: int, flops: dict) -> dict:
    """CPU time per step of each method, interleaved step by step, then torch.profiler's split of DART's step."""
    from torch.profiler import ProfilerActivity, profile

    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for step in range(steps + 2):
        for m in METHODS[step % len(METHODS):] + METHODS[: step % len(METHODS)]:
            start = time.thread_time()
            _train_step(*setups[m])
            if step >= 2:
                times[m].append(1000 * (time.thread_time() - start))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            _train_step(*setups["dart"])
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    median = {m: statistics.median(times[m]) for m in METHODS}
    return {"cpu_ms_per_step_median": median,
            "dart_over_cot_plus_pause": {"flops": flops["dart"] / (flops["cot"] + flops["pause"]),
                                         "cpu_time": median["dart"] / (median["cot"] + median["pause"])},
            "dart_over_cot": {"flops": flops["dart"] / flops["cot"], "cpu_time": median["dart"] / median["cot"]},
            "dart_profile_self_cpu_share": {e.key: e.self_cpu_time_total / total for e in ops[:10]}}


if __name__ == "__main__":
    main()
