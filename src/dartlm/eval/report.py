"""`dartlm report`: results JSON files -> a Table-1-style markdown table and an accuracy-vs-latency plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

# The order the paper's tables use; other benchmarks follow alphabetically.
BENCHMARK_ORDER = ("gsm8k", "gsm-hard", "svamp", "multiarith", "prosqa", "commonsenseqa")
METHOD_ORDER = ("cot", "coconut", "codi", "nocot", "icot", "pause", "dart")


def load_results(paths: Sequence[Path]) -> list[dict]:
    results = []
    for path in paths:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        data.setdefault("label", Path(data.get("model", path)).name)
        results.append(data)
    return results


def _benchmarks(results: list[dict]) -> list[str]:
    present = {r["benchmark"] for r in results}
    return [b for b in BENCHMARK_ORDER if b in present] + sorted(present - set(BENCHMARK_ORDER))


def _rows(results: list[dict]) -> list[str]:
    labels = list(dict.fromkeys(r["label"] for r in results))
    method_of = {r["label"]: r.get("method", "") for r in results}
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    return sorted(labels, key=lambda label: (rank.get(method_of[label], len(rank)), label))


def markdown_table(results: list[dict], metric: str = "strict") -> str:
    """Rows: models (by method, in the paper's order); columns: benchmarks; cells: accuracy % / median ms."""
    benchmarks = _benchmarks(results)
    cell = {(r["label"], r["benchmark"]): r for r in results}
    lines = [
        "| model | method | " + " | ".join(benchmarks) + " |",
        "|---|---|" + "---|" * len(benchmarks),
    ]
    for label in _rows(results):
        row = []
        for bench in benchmarks:
            r = cell.get((label, bench))
            if r is None:
                row.append("—")
                continue
            ms = r.get("latency_ms", {}).get("median")
            row.append(f"{100 * r['accuracy'][metric]:.1f} / {ms:.0f}" if ms is not None else f"{100 * r['accuracy'][metric]:.1f} / —")
        method = next(r["method"] for r in results if r["label"] == label)
        lines.append(f"| {label} | {method} | " + " | ".join(row) + " |")
    lines.append("")
    lines.append(f"Cells: accuracy % ({metric} answer extraction) / median latency in ms per sample at batch size 1.")
    return "\n".join(lines)


def plot_accuracy_vs_latency(results: list[dict], path: Path, metric: str = "strict") -> None:
    """One point per model and benchmark: x = median latency (log scale), y = accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = "osD^v<>Px*"
    benchmarks = _benchmarks(results)
    for index, label in enumerate(_rows(results)):
        for bench_index, bench in enumerate(benchmarks):
            r = next((r for r in results if r["label"] == label and r["benchmark"] == bench), None)
            if r is None or r.get("latency_ms", {}).get("median") is None:
                continue
            ax.scatter(r["latency_ms"]["median"], 100 * r["accuracy"][metric], color=f"C{index % 10}",
                       marker=markers[bench_index % len(markers)], s=60,
                       label=f"{label}" if bench_index == 0 else None)
            ax.annotate(bench, (r["latency_ms"]["median"], 100 * r["accuracy"][metric]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("median latency per sample (ms, batch size 1, log scale)")
    ax.set_ylabel(f"accuracy (%, {metric})")
    ax.set_title("Accuracy against inference latency")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
