"""Every method and ablation on the demo's synthetic task, over seeds: `dartlm compare` and `dartlm sweep`.

Each (seed, variant) job trains from scratch with the demo's model and budget, exports, and scores the test split
(batched). Jobs can run in parallel worker processes (one thread each), and each writes its result file as soon as
it finishes, so an interrupted run resumes where it stopped. Latency is measured afterwards in one quiet pass:
batch size 1, every variant on the same test questions, interleaved question by question, so that the numbers are
comparable side by side. Results: JSON, a markdown table and a plot.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

from dartlm.config import ConfigError
from dartlm.demo import DemoSettings, check_data, method_config, prepare_data, shared_base
from dartlm.storage import OutputLock, digest, write_json, write_text


@dataclass(frozen=True)
class Variant:
    label: str
    method: str
    overrides: dict = field(default_factory=dict)  # "section.key" -> value, on top of the demo's config
    paper: str = ""  # what it corresponds to in the DART paper
    teacher: str = ""  # the variant whose exported model of the same seed this one learns from (FQS-NTP)


QUIET = {"method.quiet_policy_weight": 1.0, "method.quiet_passes": 2, "method.quiet_loss_on": "answer"}

# The demo trains 4 epochs (500 steps of 32 on 4,000 problems) on 3-step problems (2 CoT steps after the last is
# dropped); the curricula are scaled to that: iCoT removes 8 tokens per epoch (its default; a CoT is ~13 tokens),
# Coconut has one stage per epoch and 2 thoughts per step (its GSM8K setting), CODI 6 thoughts (its default).
VARIANTS = {v.label: v for v in (
    Variant("nocot", "nocot", paper="Table 1: No-CoT"),
    Variant("cot", "cot", paper="Table 1: CoT"),
    Variant("pause", "pause", paper="Table 1: PauseFT"),
    Variant("dart", "dart", paper="Table 1: DART"),
    Variant("icot", "icot", paper="Table 1: iCoT"),
    Variant("coconut", "coconut", {"method.coconut_thoughts_per_step": 2, "method.coconut_max_stages": 2,
                                   "method.coconut_epochs_per_stage": 1.0}, paper="Table 1: Coconut"),
    Variant("codi", "codi", {"method.num_thought_tokens": 6}, paper="Table 1: CODI"),
    Variant("dart-no-st", "dart", {"method.num_thought_tokens": 0}, paper="Table 3: w/o ST"),
    Variant("dart-no-rem", "dart", {"rem.enabled": False}, paper="Table 3: w/o REM"),
    Variant("dart-lora-rem", "dart", {"rem.placement": "output"}, paper="Table 3: w/ LoRA-REM"),
    Variant("dart-no-distill", "dart", {"method.distill_weight": 0.0}, paper="Table 3: w/o L_distill"),
    Variant("dart-distill-y1", "dart", {"method.distill_at": "y_1"}, paper="Table 3: L_distill on y_1"),
    Variant("dart-distill-zn-answer", "dart", {"method.distill_at": "z_n_and_answer"},
            paper="Table 3: L_distill on [z_N; Y]"),
    # Ours, not the paper's: the guards against distillation collapse (methods/distill_guards.py).
    Variant("dart-student", "dart", {"method.distill_grad": "student"}, paper="ours: L_distill into REM only"),
    Variant("dart-delayed", "dart", {"method.distill_start": 0.25, "method.distill_ramp": 0.25},
            paper="ours: lambda off for 25%, ramped over 25%"),
    Variant("dart-student-delayed", "dart", {"method.distill_grad": "student", "method.distill_start": 0.25,
                                             "method.distill_ramp": 0.25}, paper="ours: both guards"),
    Variant("codi-student", "codi", {"method.num_thought_tokens": 6, "method.distill_grad": "student"},
            paper="ours: CODI, L_distill into the projection only"),
    # The token-level-thought family, scaled to the demo (the sources: thoughts of 12 tokens, 16 -> 12 -> 8 for
    # Fast Quiet-STaR, 4 talk tokens; here 6, and 8 -> 6 -> 4, as the answers are 2-3 tokens long). The policy
    # weight is 1, not the sources' 1e6: with Adam at lr 1e-2 a weight of 1e6 leaves the NLL no say in the shared
    # LoRA weights. The loss counts the answer only (as No-CoT's), so only the answer positions think in training,
    # where inference thinks: thoughts at all ~100 positions of a question cost 24x a No-CoT step. Fast
    # Quiet-STaR NTP learns from the Fast Quiet-STaR model of its seed.
    Variant("quiet-star", "quiet-star", {**QUIET, "method.quiet_n_ahead": 6, "method.quiet_n_talk": 2},
            paper="Quiet-STaR (Zelikman et al. 2024)"),
    Variant("quiet-star-w1e6", "quiet-star", {**QUIET, "method.quiet_n_ahead": 6, "method.quiet_n_talk": 2,
                                              "method.quiet_policy_weight": 1.0e6},
            paper="Quiet-STaR with the sources' policy weight 1e6"),
    Variant("fast-quiet-star", "fast-quiet-star", {**QUIET, "method.fqs_stages": [[8, 3], [6, 2], [4, 2]]},
            paper="Fast Quiet-STaR (Huang et al. 2025)"),
    Variant("fqs-ntp", "fqs-ntp", {**QUIET, "method.ntp_policy_weight": 1.0}, teacher="fast-quiet-star",
            paper="Fast Quiet-STaR NTP, as written"),
    Variant("fqs-ntp-nll", "fqs-ntp", {**QUIET, "method.ntp_policy_weight": 1.0, "method.ntp_nll_weight": 1.0},
            teacher="fast-quiet-star", paper="ours: FQS-NTP with the plain NLL added"),
)}
GROUPS = {
    "table1": ["nocot", "cot", "pause", "dart", "icot", "coconut", "codi"],
    "table3": ["dart", "dart-no-st", "dart-no-rem", "dart-lora-rem", "dart-no-distill", "dart-distill-y1",
               "dart-distill-zn-answer"],
    "demo": ["nocot", "cot", "pause", "dart"],
    "guards": ["dart", "dart-no-distill", "dart-student", "dart-delayed", "dart-student-delayed"],
    "regime": ["nocot", "cot", "pause", "dart", "dart-no-distill", "codi"],
    "quiet": ["quiet-star", "fast-quiet-star", "fqs-ntp", "fqs-ntp-nll"],
}


def resolve_variants(names: list[str]) -> list[Variant]:
    """Variant labels and group names (table1, table3, demo) -> variants, in order, without repeats; a variant
    that learns from another's model brings that one in before it."""
    labels: list[str] = []
    for name in names:
        for label in GROUPS.get(name, [name]):
            if label not in VARIANTS:
                raise ConfigError(f"unknown variant {label!r}; known: {', '.join(VARIANTS)}; groups: "
                                  f"{', '.join(GROUPS)}")
            teacher = VARIANTS[label].teacher
            for needed in ([teacher] if teacher else []) + [label]:
                if needed not in labels:
                    labels.append(needed)
    return [VARIANTS[label] for label in labels]


def sweep_variants(values: list[int]) -> list[Variant]:
    """DART with C = each value (the paper's Figure 2)."""
    return [Variant(f"dart-c{c}", "dart", {"method.num_thought_tokens": c}, paper="Figure 2") for c in values]


def run_job(job: dict) -> dict:
    """Train, export and score one (seed, variant); runs in a worker process. Returns the result it wrote."""
    import torch

    from dartlm.eval.evaluate import EvalSettings, evaluate
    from dartlm.training.run import export_run, final_terms, resumable, train, write_run_card

    torch.set_num_threads(job["threads"])
    settings = DemoSettings(**job["settings"])
    variant = Variant(**job["variant"])
    root = Path(job["seed_dir"])
    run_dir, model_dir = root / "runs" / variant.label, root / "models" / variant.label
    config = method_config(settings, variant.method, root / "data", run_dir, shared_base(settings),
                           settings.train_steps)
    for key, value in variant.overrides.items():
        config.set(key, value, f"variant {variant.label}")
    if variant.teacher:
        config.method.ntp_teacher = str(root / "models" / variant.teacher)
    config.training.progress_bar = False
    config.validate(f"variant {variant.label}")
    started = time.perf_counter()
    resume = resumable(run_dir, config)  # a run interrupted after a checkpoint continues from it
    train(config, run_dir, resume=resume, overwrite=not resume)
    train_s = time.perf_counter() - started
    check = export_run(run_dir, model_dir, force=True, log=lambda *_: None)
    split = job["split"]
    scored = evaluate(model_dir, EvalSettings(benchmark="gsm8k", data_path=str(root / "data" / f"{split}.txt"),
                                              batch_size=32, latency_items=0),
                      root / "scores" / f"{variant.label}-{split}.json", progress=False)
    write_run_card(run_dir, model_dir, check=check, results=[scored])
    result = {"label": variant.label, "seed": settings.seed, "split": split, "accuracy": scored["accuracy"]["strict"],
              "train_s": train_s, "n": scored["n"], "new_tokens": scored["new_tokens"]["mean"],
              "final_terms": final_terms(run_dir)}
    result["fingerprint"] = job["fingerprint"]
    write_json(Path(job["result_path"]), result)
    return result


def job_path(out_dir: Path, seed: int, variant: Variant, split: str) -> Path:
    """Where one (seed, variant) run's result is written; results on the test split keep their old names."""
    return out_dir / f"seed-{seed}" / "results" / f"{variant.label}{'' if split == 'test' else '-' + split}.json"


def run_comparison(variants: list[Variant], settings: DemoSettings, seeds: list[int], out_dir: Path, *,
                   workers: int = 1, latency_items: int = 100, split: str = "test", threads: int | None = None,
                   log=print) -> dict:
    """Train and score every (seed, variant) on `split` (val to choose, test to report), then time every variant
    side by side; writes comparison.{json,md,png}. `threads`: torch threads per job (default: the two cores shared
    among the workers)."""
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ConfigError(f"seeds {seeds}: give each seed once")
    out_dir.mkdir(parents=True, exist_ok=True)
    with OutputLock(out_dir, "comparison folder"):
        return _run_comparison(variants, settings, seeds, out_dir, workers, latency_items, split, log,
                               threads or (1 if workers > 1 else 2))


# Settings that change how a run is saved or which methods a demo runs, not what a job trains.
UNTRACKED_SETTINGS = ("save_every", "methods")


def job_fingerprint(settings: DemoSettings, variant: Variant, split: str, data: str, base: str) -> str:
    """What a job's result depends on: the settings, the variant, the split, the data and the base model."""
    tracked = {k: v for k, v in asdict(settings).items() if k not in UNTRACKED_SETTINGS}
    return digest({"settings": tracked, "variant": asdict(variant), "split": split, "data": data, "base": base})


def base_identity(base_dir: Path | None) -> str:
    """The base model a job fine-tunes: its build note (rebuilt base, new identity) or its path."""
    if base_dir is None:
        return "from scratch"
    for note in ("dartlm_base.json", "dartlm_source.json"):
        if (base_dir / note).is_file():
            return digest((base_dir / note).read_text(encoding="utf-8", errors="replace"))
    return str(base_dir)


def finished_result(path: Path, fingerprint: str) -> bool:
    """Whether path holds this job's result; a result of other settings is refused, never mixed in."""
    if not path.is_file():
        return False
    try:
        found = json.loads(path.read_text(encoding="utf-8")).get("fingerprint")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return False  # unreadable (written by an older version, not atomically): done again
    if found != fingerprint:
        raise ConfigError(f"{path}: holds a result of other settings (fingerprint {found}, these settings give "
                          f"{fingerprint}); use another --output-dir, or delete it to run it again")
    return True


def _run_comparison(variants, settings, seeds, out_dir: Path, workers, latency_items, split, log, threads) -> dict:
    started = time.perf_counter()
    base = base_identity(shared_base(settings, log))  # built once here, before the workers, so they never race
    jobs = []
    for seed in seeds:
        seed_dir = out_dir / f"seed-{seed}"
        current = replace(settings, seed=seed)
        if not (seed_dir / "data").exists():
            prepare_data(current, seed_dir / "data")
        data = check_data(current, seed_dir / "data")
        for variant in variants:
            result_path = job_path(out_dir, seed, variant, split)
            fingerprint = job_fingerprint(current, variant, split, data, base)
            if finished_result(result_path, fingerprint):
                continue  # done in an earlier, interrupted run
            jobs.append({"settings": asdict(current), "variant": asdict(variant), "seed_dir": str(seed_dir),
                         "result_path": str(result_path), "threads": threads, "split": split,
                         "fingerprint": fingerprint})
    log(f"{len(variants)} variants x {len(seeds)} seeds: {len(jobs)} runs to do, {workers} worker(s)")
    # Two waves: the variants that learn from another's exported model run after every other job.
    waves = [[j for j in jobs if not j["variant"]["teacher"]], [j for j in jobs if j["variant"]["teacher"]]]
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn")) if workers > 1 else nullcontext()
    with pool:
        for wave in waves:
            for result in (pool.map if workers > 1 else map)(run_job, wave):
                log(f"  seed {result['seed']} {result['label']}: {100 * result['accuracy']:.1f}% "
                    f"(trained in {result['train_s']:.0f} s)")
    results = {v.label: [json.loads(job_path(out_dir, s, v, split).read_text()) for s in seeds]
               for v in variants}
    latency = measure_latency(variants, out_dir / f"seed-{seeds[0]}", latency_items, log=log)
    summary = summarize_comparison(variants, results, latency, settings, seeds, out_dir, split)
    summary["split"] = split
    summary["wall_time_s"] = time.perf_counter() - started
    summary["workers"] = workers
    write_json(out_dir / "comparison.json", summary)
    table = comparison_table(summary)
    write_text(out_dir / "comparison.md", table + "\n")
    plot_comparison(summary, out_dir / "comparison.png")
    log("\n" + table)
    return summary


def measure_latency(variants: list[Variant], seed_dir: Path, items: int, *, warmup: int = 3, log=print) -> dict:
    """Batch-size-1 latency of every exported variant on the same test questions, interleaved."""
    from dartlm.eval.benchmarks import load_benchmark
    from dartlm.eval.latency import interleaved_latency, not_timed

    if items <= 0:  # not timed (e.g. a long run whose timing is left for a quiet machine)
        return not_timed([v.label for v in variants])
    questions = [i.question for i in load_benchmark("gsm8k", str(seed_dir / "data" / "test.txt"), limit=items)]
    return interleaved_latency({v.label: seed_dir / "models" / v.label for v in variants}, questions, warmup=warmup,
                               log=log)


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
            "latency_items": latency["n"], "machine": latency["machine"], "variants": rows}


TERMS = (("loss_cot", "L_CoT"), ("loss_st", "L_ST"), ("loss_distill", "L_distill"), ("teacher_spread", "teacher_spread"),
         # Quiet-STaR and FQS-NTP (methods/quiet_star.py)
         ("loss_nll", "NLL"), ("loss_policy", "policy"), ("improvement", "NLL gain from thoughts"),
         ("mix_weight", "mixing weight"), ("teacher_nll", "teacher NLL"), ("rewarded", "rewarded share"))


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
    baselines = [v["frequency_baseline"] for row in summary["variants"].values()
                 for v in row.get("answer_variety_per_seed") or [] if v]
    if baselines:
        lines += ["", f"Frequency baseline (always answering the split's most common answer): "
                      f"{100 * statistics.fmean(baselines):.1f}% (mean over seeds)."]
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
