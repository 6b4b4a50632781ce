"""A comparison's summary over seeds: mean and spread per variant, loss terms, the answers' variety; its markdown
table and plots."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from dataclasses import asdict
from pathlib import Path


def answer_variety(scores: Path) -> dict | None:
    """How many different answers a model gave on the scored split, and the share of its most common one.

    A model that answers a few constants scores what those constants' frequency in the split gives (the split's
    own `frequency_baseline`: the share of its most common reference answer); this tells the two apart.
    """
    if not scores.is_file():
        return None
    items = [json.loads(line) for line in scores.read_text(encoding="utf-8").splitlines()]
    items = [i for i in items if i.get("type") == "item"]
    if not items:
        return None
    predictions = Counter(str(i["strict_prediction"]) for i in items)
    targets = Counter(str(i["target"]) for i in items)
    return {"distinct_answers": len(predictions), "top_answer_share": predictions.most_common(1)[0][1] / len(items),
            "frequency_baseline": targets.most_common(1)[0][1] / len(items)}


def item_outcomes(scores: Path) -> dict[str, bool] | None:
    """Whether each item of a score stream was answered right (the strict score), by item id."""
    if not scores.is_file():
        return None
    items = [json.loads(line) for line in scores.read_text(encoding="utf-8").splitlines()]
    return {i["id"]: bool(i["strict"]) for i in items if i.get("type") == "item"}


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact sign test (McNemar's exact test) on the discordant items: the chance, if neither model were
    better, of a split at least this uneven between the items only one of them got right."""
    n = wins + losses
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_difference(out_dir: Path, seeds, split: str, first: str, second: str) -> dict | None:
    """`first` against `second` on the same items: per seed, the items only one of the two got right; pooled over
    seeds, the difference in points and the sign test on those items. Two accuracies a few points apart on 200 items
    can be noise; whether the same items move says more than the two means do."""
    per_seed = []
    for seed in seeds:
        scores = out_dir / f"seed-{seed}" / "scores"
        a, b = item_outcomes(scores / f"{first}-{split}.jsonl"), item_outcomes(scores / f"{second}-{split}.jsonl")
        if not a or not b:
            return None
        common = a.keys() & b.keys()
        wins = sum(a[i] and not b[i] for i in common)
        losses = sum(b[i] and not a[i] for i in common)
        per_seed.append({"seed": seed, "items": len(common), "first_only": wins, "second_only": losses})
    items = sum(s["items"] for s in per_seed)
    wins, losses = sum(s["first_only"] for s in per_seed), sum(s["second_only"] for s in per_seed)
    return {"first": first, "second": second, "items": items, "first_only": wins, "second_only": losses,
            "difference": 100 * (wins - losses) / items if items else 0.0, "sign_test_p": sign_test_p(wins, losses),
            "seeds_first_ahead": sum(s["first_only"] > s["second_only"] for s in per_seed), "per_seed": per_seed}


def paired_differences(variants, out_dir: Path, seeds, split: str) -> list[dict]:
    """Every DART variant against every other variant of the comparison (each pair once)."""
    pairs, seen = [], set()
    for first in (v for v in variants if v.method == "dart"):
        for second in variants:
            if second.label == first.label or frozenset((first.label, second.label)) in seen:
                continue
            seen.add(frozenset((first.label, second.label)))
            paired = paired_difference(out_dir, seeds, split, first.label, second.label)
            if paired:
                pairs.append(paired)
    return pairs


def summarize_comparison(variants, results, latency, settings, seeds, out_dir: Path | None = None,
                         split: str = "test") -> dict:
    rows = {}
    for v in variants:
        accs = [100 * r["accuracy"] for r in results[v.label]]
        variety = [answer_variety(out_dir / f"seed-{s}" / "scores" / f"{v.label}-{split}.jsonl")
                   for s in seeds] if out_dir else []
        rows[v.label] = {
            "method": v.method, "overrides": v.overrides, "paper": v.paper,
            "accuracy_mean": statistics.fmean(accs),
            "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "accuracy_per_seed": accs,
            "train_s_mean": statistics.fmean(r["train_s"] for r in results[v.label]),
            "final_terms_per_seed": [r.get("final_terms", {}) for r in results[v.label]],
            "answer_variety_per_seed": variety,
            **latency["variants"][v.label],
        }
    return {"settings": asdict(settings), "seeds": seeds, "test_items": results[variants[0].label][0]["n"],
            "latency_items": latency["n"], "machine": latency["machine"], "variants": rows,
            "job_machines": job_machines(r for runs in results.values() for r in runs),
            "paired": paired_differences(variants, out_dir, seeds, split) if out_dir else []}


def job_machines(results) -> list[str]:
    """The machines the jobs trained on (CPU model and vector instructions; results written before this was recorded
    count as "unrecorded"). More than one: results of several machines, which round differently, are mixed."""
    def describe(machine: dict | None) -> str:
        return f"{machine['cpu']} ({machine.get('cpu_capability', '?')})" if machine else "unrecorded"
    return sorted({describe(r.get("machine")) for r in results})


TERMS = (("loss_cot", "L_CoT"), ("loss_st", "L_ST"), ("loss_distill", "L_distill"), ("teacher_spread", "teacher_spread"),
         # Quiet-STaR and FQS-NTP (methods/quiet_star.py)
         ("loss_nll", "NLL"), ("loss_policy", "policy"), ("improvement", "NLL gain from thoughts"),
         ("mix_weight", "mixing weight"), ("teacher_nll", "teacher NLL"), ("rewarded", "rewarded share"))


def per_seed_terms(summary: dict, terms) -> list[str]:
    """The loss terms and answers of every run, seed by seed: a mean over seeds can hide one run that collapsed."""
    lines = ["", "The same, run by run.", "",
             "| variant | seed | accuracy % | loss | " + " | ".join(name for _, name in terms) +
             " | distinct answers | top answer % |",
             "|---|---|---|---|" + "---|" * len(terms) + "---|---|"]
    for label, row in summary["variants"].items():
        runs = row.get("final_terms_per_seed") or []
        varieties = row.get("answer_variety_per_seed") or []
        for i, seed in enumerate(summary["seeds"]):
            run = runs[i] if i < len(runs) else {}
            variety = varieties[i] if i < len(varieties) else None
            cells = [f"{row['accuracy_per_seed'][i]:.1f}"]
            cells += [f"{run[key]:.4g}" if key in run else "–" for key in ("loss",) + tuple(k for k, _ in terms)]
            cells += [f"{variety['distinct_answers']}", f"{100 * variety['top_answer_share']:.1f}"] if variety \
                else ["–", "–"]
            lines.append(f"| {label} | {seed} | " + " | ".join(cells) + " |")
    return lines


def comparison_table(summary: dict) -> str:
    split = {"test": "test", "val": "validation"}[summary.get("split", "test")]
    lines = [
        f"Synthetic task, {summary['test_items']} {split} problems, seeds {', '.join(map(str, summary['seeds']))}; "
        f"latency: median of {summary['latency_items']} questions at batch size 1, interleaved (seed "
        f"{summary['seeds'][0]}'s models).",
        "",
        "| variant | paper | accuracy % (mean ± std) | per seed | ms/sample | forward passes | tokens generated | "
        "thought tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, row in summary["variants"].items():
        seeds = " / ".join(f"{a:.1f}" for a in row["accuracy_per_seed"])
        timed = [row["latency_ms"]["median"], row["forward_passes"], row["new_tokens"], row.get("thought_tokens")]
        cells = " | ".join("not timed" if x is None else f"{x:.1f}" for x in timed)
        lines.append(f"| {label} | {row['paper']} | {row['accuracy_mean']:.1f} ± {row['accuracy_std']:.1f} | {seeds} | "
                     f"{cells} |")
    machines = summary.get("job_machines") or []
    if len(machines) > 1:
        lines += ["", f"**The jobs trained on {len(machines)} different machines** ({'; '.join(machines)}): machines "
                  "that round differently can end a chaotic fine-tuning elsewhere."]
    logged = {k for row in summary["variants"].values() for r in row.get("final_terms_per_seed") or [] for k in r}
    terms = [(k, name) for k, name in TERMS if k in logged] or list(TERMS[:4])
    lines += ["", "Loss terms logged last in training, and the answers given (mean over seeds; – where there are none). "
              "distinct answers: how many different answers the model gave; top answer: the share of its most common "
              "one (a model that answers a few constants has few distinct answers and a large top share).", "",
              "| variant | loss | " + " | ".join(name for _, name in terms) + " | distinct answers | top answer % |",
              "|---|---|" + "---|" * len(terms) + "---|---|"]
    for label, row in summary["variants"].items():
        runs = row.get("final_terms_per_seed") or [{}]
        cells = []
        for key in ("loss",) + tuple(k for k, _ in terms):
            values = [r[key] for r in runs if key in r]
            cells.append(f"{statistics.fmean(values):.4g}" if values else "–")
        variety = [v for v in row.get("answer_variety_per_seed") or [] if v]
        cells.append(f"{statistics.fmean(v['distinct_answers'] for v in variety):.1f}" if variety else "–")
        cells.append(f"{100 * statistics.fmean(v['top_answer_share'] for v in variety):.1f}" if variety else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if len(summary["seeds"]) > 1:
        lines += per_seed_terms(summary, terms)
    baselines = [v["frequency_baseline"] for row in summary["variants"].values()
                 for v in row.get("answer_variety_per_seed") or [] if v]
    if baselines:
        lines += ["", f"Frequency baseline (always answering the split's most common answer): "
                      f"{100 * statistics.fmean(baselines):.1f}% (mean over seeds)."]
    if summary.get("paired"):
        lines += ["", "DART against the others on the same items (strict scores, seeds pooled): the difference in "
                  "points, the items only one of the two got right, the two-sided exact sign test on those items "
                  "(McNemar's), and on how many seeds the first is ahead.", "",
                  "| first − second | difference (points) | first only / second only | sign test p | seeds ahead |",
                  "|---|---|---|---|---|"]
        for pair in summary["paired"]:
            lines.append(f"| {pair['first']} − {pair['second']} | {pair['difference']:+.1f} | {pair['first_only']} / "
                         f"{pair['second_only']} | {pair['sign_test_p']:.3g} | {pair['seeds_first_ahead']} of "
                         f"{len(pair['per_seed'])} |")
    return "\n".join(lines)


def plot_comparison(summary: dict, path: Path) -> None:
    """Accuracy (mean ± std over seeds) against median latency, one point per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for index, (label, row) in enumerate(summary["variants"].items()):
        x, y = row["latency_ms"]["median"], row["accuracy_mean"]
        if x is None:  # not timed: no place on a latency axis
            continue
        ax.errorbar(x, y, yerr=row["accuracy_std"], fmt="o" if row["method"] != "dart" else "s",
                    color=f"C{index % 10}", capsize=3, label=label)
        ax.annotate(label, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("median latency per sample (ms, batch size 1, log scale)")
    ax.set_ylabel("test accuracy (%, mean ± std over seeds)")
    ax.set_title(f"Synthetic task, {len(summary['seeds'])} seeds")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sweep(summary: dict, path: Path) -> None:
    """The paper's Figure 2: accuracy and latency against C."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(summary["variants"].values(), key=lambda r: r["overrides"]["method.num_thought_tokens"])
    cs = [r["overrides"]["method.num_thought_tokens"] for r in rows]
    fig, left = plt.subplots(figsize=(7, 4.5))
    left.errorbar(cs, [r["accuracy_mean"] for r in rows], yerr=[r["accuracy_std"] for r in rows], fmt="o-",
                  color="C0", capsize=3)
    left.set_xlabel("C, the number of ST tokens")
    left.set_ylabel("test accuracy (%, mean ± std over seeds)", color="C0")
    right = left.twinx()
    right.plot(cs, [r["latency_ms"]["median"] for r in rows], "s--", color="C1")
    right.set_ylabel("median latency per sample (ms)", color="C1")
    left.set_title("DART: accuracy and latency against C")
    left.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
