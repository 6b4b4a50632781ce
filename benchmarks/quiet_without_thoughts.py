"""What Quiet-STaR's thoughts add: each thinking model of a `dartlm compare` run scored again without its thoughts.

For every seed and thinking variant (quiet-star, fast-quiet-star), the exported model answers the same test split
twice: as trained, with a thought before each answer token mixed in by its head, and from the thought-free state
alone (`dartlm eval --without-thoughts`: the mixing weight at 0, one pass per token). Equal accuracies mean the
thoughts carry nothing the answer uses; the difference is what thinking is worth to those weights.

    python benchmarks/quiet_without_thoughts.py --comparison-dir quiet-test --seeds 0,1,2 \
        --output benchmarks/results/quiet-without-thoughts
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from dartlm.eval.evaluate import EvalSettings, evaluate

VARIANTS = ("quiet-star", "fast-quiet-star")


def score(seed_dir: Path, label: str, without_thoughts: bool) -> dict:
    suffix = "-without-thoughts" if without_thoughts else ""
    settings = EvalSettings(benchmark="gsm8k", data_path=str(seed_dir / "data" / "test.txt"), batch_size=32,
                            latency_items=0, without_thoughts=without_thoughts)
    result = evaluate(seed_dir / "models" / label, settings, seed_dir / "scores" / f"{label}-test{suffix}.json",
                      progress=False)
    return {"accuracy": 100 * result["accuracy"]["strict"], "thought_tokens": result["thought_tokens"].get("mean")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comparison-dir", required=True, type=Path)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--output", required=True, type=Path, help="writes OUTPUT.json and OUTPUT.md")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = {}
    for label in VARIANTS:
        runs = [{"seed": seed, "with": score(args.comparison_dir / f"seed-{seed}", label, False),
                 "without": score(args.comparison_dir / f"seed-{seed}", label, True)} for seed in seeds]
        rows[label] = {"per_seed": runs, **{f"{k}_mean": statistics.fmean(r[k]["accuracy"] for r in runs)
                                            for k in ("with", "without")}}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps({"seeds": seeds, "variants": rows}, indent=2) + "\n",
                                                encoding="utf-8")
    lines = ["| model | with its thoughts (per seed) | without them (per seed) | thought tokens per answer |",
             "|---|---|---|---|"]
    for label, row in rows.items():
        per = lambda k: " / ".join(f"{r[k]['accuracy']:.1f}" for r in row["per_seed"])  # noqa: E731
        thoughts = statistics.fmean(r["with"]["thought_tokens"] for r in row["per_seed"])
        lines.append(f"| {label} | {row['with_mean']:.1f} ({per('with')}) | {row['without_mean']:.1f} "
                     f"({per('without')}) | {thoughts:.1f} |")
    args.output.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
