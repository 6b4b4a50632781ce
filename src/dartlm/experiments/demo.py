"""`dartlm demo`: DART against its baselines on a synthetic reasoning task, offline, on a CPU, in minutes.

Generates multi-step arithmetic word problems in the GSM8K-Aug layout and, in the paper's regime (the default),
fine-tunes one small pretrained base with LoRA, the base frozen, with each method (No-CoT, CoT, PauseFT, DART) on the
same budget. The base is a Llama-style model pretrained once on general arithmetic text that is not the task
(`base_steps`; built on first use and cached, `model/base_lm.py`). With `base_steps = 0` every method trains the
model from scratch instead; with `pretrain_steps > 0` the shared base is trained on the task's own text. Each model
is evaluated on held-out problems with the same evaluator as the real benchmarks. Prints a table, writes JSON and a
plot, exports the DART model and lets it answer a few new questions.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from dartlm.eval.benchmarks import load_benchmark
from dartlm.eval.evaluate import EvalSettings, evaluate
from dartlm.eval.latency import interleaved_latency
from dartlm.eval.report import markdown_table, plot_accuracy_vs_latency
from dartlm.experiments.data import prepare_data
from dartlm.experiments.settings import DemoSettings, method_config, pretrain_base, shared_base
from dartlm.exports.run import export_run, write_run_card
from dartlm.storage import OutputLock, write_json, write_text
from dartlm.training.run import train

SHOWN_ANSWERS = 4  # evaluated questions printed with every method's answer


def run_demo(settings: DemoSettings, out_dir: Path, *, eval_split: str = "test", log=print) -> dict:
    """Train, evaluate and export every method; returns the summary (also written to out_dir/demo.json)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with OutputLock(out_dir, "demo folder"):
        return _run_demo(settings, out_dir, eval_split, log)


def _run_demo(settings: DemoSettings, out_dir: Path, eval_split: str, log) -> dict:
    started = time.perf_counter()
    data_dir = out_dir / "data"
    splits = prepare_data(settings, data_dir)
    log(f"task: {settings.task_steps}-step problems, operands 1..{settings.max_value}, ops {settings.operations}; "
        f"{len(splits['train'])} train / {len(splits['val'])} val / {len(splits['test'])} test")
    clock = time.perf_counter()
    base_dir = shared_base(settings, log)
    if settings.pretrain_steps:
        base_dir = pretrain_base(settings, data_dir, out_dir, log)
    timings = {"base": {"train_s": time.perf_counter() - clock}}
    results = []
    for method in settings.methods:
        run_dir = out_dir / "runs" / method
        how = f"LoRA fine-tuning of the frozen base {base_dir.name}" if base_dir else "training from scratch"
        log(f"\n== {method}: {how}, {settings.train_steps} steps of {settings.batch_size} ==")
        clock = time.perf_counter()
        config = method_config(settings, method, data_dir, run_dir, base_dir, settings.train_steps)
        train(config, run_dir, overwrite=True)
        timings[method] = {"train_s": time.perf_counter() - clock}
        model_dir = out_dir / "models" / method
        check = export_run(run_dir, model_dir, force=True, log=log)
        clock = time.perf_counter()
        # Accuracy batched; latency afterwards, every model side by side (below).
        result = evaluate(model_dir, EvalSettings(benchmark="gsm8k", data_path=str(data_dir / f"{eval_split}.txt"),
                                                  batch_size=32, latency_items=0),
                          out_dir / "results" / f"{method}.json", progress=False)
        timings[method]["eval_s"] = time.perf_counter() - clock
        write_run_card(run_dir, model_dir, check=check, results=[result])
        result["label"] = method
        results.append(result)
    timed = interleaved_latency({r["label"]: out_dir / "models" / r["label"] for r in results},
                                [e.question for e in splits[eval_split][:settings.latency_items]], log=log)
    for result in results:
        result["latency_ms"] = timed["variants"][result["label"]]["latency_ms"]
    table = demo_table(results)
    log("\n" + table)
    plot_accuracy_vs_latency(results, out_dir / "demo.png")
    write_text(out_dir / "demo.md", table + "\n\n" + markdown_table(results) + "\n")
    show_answers(out_dir, results, log)
    summary = {
        "settings": asdict(settings),
        "eval_split": eval_split,
        "results": {r["label"]: {"accuracy": r["accuracy"], "latency_ms": r["latency_ms"],
                                 "new_tokens": r["new_tokens"], "prompt_tokens": r["prompt_tokens"],
                                 **timings[r["label"]]} for r in results},
        "base_train_s": timings["base"]["train_s"],
        "machine": results[0]["machine"] if results else {},
        "wall_time_s": time.perf_counter() - started,
    }
    write_json(out_dir / "demo.json", summary)
    log(f"\nwrote {out_dir / 'demo.json'}, {out_dir / 'demo.md'} and {out_dir / 'demo.png'} "
        f"in {summary['wall_time_s'] / 60:.1f} min")
    return summary


def demo_table(results: list[dict]) -> str:
    lines = ["| method | accuracy % | ms per sample (median) | tokens generated per sample |", "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['label']} | {100 * r['accuracy']['strict']:.1f} | {r['latency_ms']['median']:.1f} | "
                     f"{r['new_tokens']['mean']:.1f} |")
    return "\n".join(lines)


def show_answers(out_dir: Path, results: list[dict], log, count: int = SHOWN_ANSWERS) -> None:
    """A few evaluated questions with every method's answer beside the reference, each marked right or wrong."""
    import json

    answers = {}
    for result in results:
        stream = out_dir / "results" / f"{result['label']}.jsonl"
        records = [json.loads(line) for line in stream.read_text(encoding="utf-8").splitlines()]
        answers[result["label"]] = {r["id"]: r for r in records if r.get("type") == "item"}
    questions = {item.id: item for item in load_benchmark("gsm8k", results[0]["data"])}
    shown = list(questions)[:count]
    log(f"\n{len(shown)} of the evaluated questions, every method's answer (right: +, wrong: -):")
    for item_id in shown:
        item = questions[item_id]
        log(f"  Q: {item.question}\n     reference {item.target} (its chain of thought: "
            f"{' '.join(item.reference_steps)})")
        cells = []
        for label, records in answers.items():
            record = records[item_id]
            cells.append(f"{label} {record['strict_prediction'] or '(none)'} {'+' if record['strict'] else '-'}")
        log("     " + " | ".join(cells))
