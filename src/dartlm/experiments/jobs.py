"""Every method and ablation on the demo's synthetic task, over seeds: `dartlm compare` and `dartlm sweep`.

Each (seed, variant) job trains from scratch with the demo's model and budget, exports, and scores the test split
(batched). Jobs can run in parallel worker processes (one thread each), and each writes its result file as soon as
it finishes, so an interrupted run resumes where it stopped. Latency is measured afterwards in one quiet pass:
batch size 1, every variant on the same test questions, interleaved question by question, so that the numbers are
comparable side by side. Results: JSON, a markdown table and a plot.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, replace
from multiprocessing import get_context
from pathlib import Path

from dartlm.config import ConfigError
from dartlm.experiments.data import check_data, prepare_data
from dartlm.experiments.report import comparison_table, plot_comparison, summarize_comparison
from dartlm.experiments.settings import DemoSettings, identity, method_config, shared_base
from dartlm.experiments.variants import Variant
from dartlm.model.base_lm import BASE_FILE, base_content
from dartlm.model.offline import SOURCE_FILE
from dartlm.storage import OutputLock, digest, write_json, write_text


def run_job(job: dict) -> dict:
    """Train, export and score one (seed, variant); runs in a worker process. Returns the result it wrote."""
    import torch

    from dartlm.eval.evaluate import EvalSettings, evaluate
    from dartlm.eval.measure import machine_info
    from dartlm.exports.run import export_run, write_run_card
    from dartlm.training.run import final_terms, resumable, train

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
        config.set("method.ntp_teacher", str(root / "models" / variant.teacher), f"variant {variant.label}")
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
              "final_terms": final_terms(run_dir),
              "machine": machine_info("cpu")}  # results restored from another machine stay told apart
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
UNTRACKED_SETTINGS = ("save_every", "methods", "latency_items")


def job_fingerprint(settings: DemoSettings, variant: Variant, split: str, data: str, base: str) -> str:
    """What a job's result depends on: the settings, the variant, the split, the data and the base model."""
    tracked = identity(settings, [k for k in asdict(settings) if k not in UNTRACKED_SETTINGS])
    return digest({"settings": tracked, "variant": asdict(variant), "split": split, "data": data, "base": base})


def base_identity(base_dir: Path | None) -> str:
    """The base model a job fine-tunes: a built base's settings and file hashes (base_content), a converted model's
    source note (its source file's sha256), or else its path."""
    if base_dir is None:
        return "from scratch"
    if (base_dir / BASE_FILE).is_file():
        return base_content(base_dir)
    if (base_dir / SOURCE_FILE).is_file():
        return digest((base_dir / SOURCE_FILE).read_text(encoding="utf-8", errors="replace"))
    return str(base_dir)


def legacy_base_identity(base_dir: Path | None) -> str | None:
    """A built base's identity as results written before base_content recorded it: the digest of its build note.
    Such a result is still taken for a base whose note is byte for byte the one it ran on (the shipped base, the same
    cached build); only new results survive a rebuild that gives the same weights."""
    if base_dir is None or not (base_dir / BASE_FILE).is_file():
        return None
    return digest((base_dir / BASE_FILE).read_text(encoding="utf-8", errors="replace"))


def finished_result(path: Path, fingerprint: str, also: tuple[str, ...] = ()) -> bool:
    """Whether path holds this job's result (its fingerprint, or one of `also`: the same job as recorded by an earlier
    version); a result of other settings is refused, never mixed in."""
    if not path.is_file():
        return False
    try:
        found = json.loads(path.read_text(encoding="utf-8")).get("fingerprint")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return False  # unreadable (written by an older version, not atomically): done again
    if found != fingerprint and found not in also:
        raise ConfigError(f"{path}: holds a result of other settings (fingerprint {found}, these settings give "
                          f"{fingerprint}); use another --output-dir, or delete it to run it again")
    return True


def _run_comparison(variants, settings, seeds, out_dir: Path, workers, latency_items, split, log, threads) -> dict:
    started = time.perf_counter()
    base_dir = shared_base(settings, log)  # built once here, before the workers, so they never race
    base, legacy_base = base_identity(base_dir), legacy_base_identity(base_dir)
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
            legacy = (job_fingerprint(current, variant, split, data, legacy_base),) if legacy_base else ()
            if finished_result(result_path, fingerprint, also=legacy):
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
