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

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from dartlm.config import Config
from dartlm.data.synthetic import SyntheticTask, generate_splits, write_icot
from dartlm.eval.benchmarks import load_benchmark
from dartlm.eval.evaluate import EvalSettings, evaluate
from dartlm.eval.latency import interleaved_latency
from dartlm.eval.report import markdown_table, plot_accuracy_vs_latency
from dartlm.model.adapters import LLAMA_STYLE_TARGETS
from dartlm.model.tiny import train_tokenizer
from dartlm.storage import OutputLock, write_json, write_text
from dartlm.training.run import export_run, train, write_run_card

METHODS = ("nocot", "cot", "pause", "dart")
LATENCY_ITEMS = 100  # questions timed side by side, at batch size 1
SHOWN_ANSWERS = 4  # evaluated questions printed with every method's answer
# LoRA targets of the demo's Llama-style model: the paper's (attention), or every linear layer of the blocks.
LORA_TARGETS = {"attention": LLAMA_STYLE_TARGETS, "all": LLAMA_STYLE_TARGETS + ("gate_proj", "up_proj", "down_proj")}


@dataclass
class DemoSettings:
    # The task (chosen before looking at DART's numbers: the smallest setting at which CoT beats No-CoT by
    # 30 points at this scale; see benchmarks/README.md).
    task_steps: int = 3
    max_value: int = 9
    operations: str = "+-"
    n_train: int = 4000
    n_val: int = 200
    n_test: int = 200
    # The model, trained from scratch.
    vocab_size: int = 1024
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    # 0: every method trains the model from scratch (full training). > 0: first a shared base model is trained from
    # scratch on the problems' text for this many steps, then every method fine-tunes it with LoRA, as in the paper.
    pretrain_steps: int = 0
    # > 0: the paper's regime. A base model of the shape above is pretrained (once, cached: model/base_lm.py) for
    # this many steps on general arithmetic text that is not the task; every method fine-tunes it with LoRA, the
    # base frozen. The base is the same for every seed, as one pretrained LLM is in the paper.
    base_steps: int = 3000  # chosen on the validation split with No-CoT and CoT only (benchmarks/README.md)
    # The base's own seed (initialisation, corpus order). Another seed stands in for another machine: the base a
    # different CPU builds differs from ours by rounding, and a regime worth reporting survives either.
    base_seed: int = 0
    # A pretrained model (hub name, folder or alias such as smollm2-135m) that every method fine-tunes with LoRA
    # instead; the shape fields above then do not apply.
    base_model: str = ""
    lora_targets: str = "attention"  # attention (the paper) | all (attention and MLP projections)
    # The same budget for every method.
    train_steps: int = 500
    lora_rank: int = 32
    lora_alpha: float = 8.0  # alpha / r = 0.25, the paper's ratio (32 / 128)
    batch_size: int = 32
    # 1e-2 for LoRA on the base, chosen on validation with No-CoT and CoT; the from-scratch demo used 2e-3.
    lr: float = 1e-2
    warmup_ratio: float = 0.03  # share of the steps over which the learning rate rises linearly from 0
    num_thought_tokens: int = 8
    rem_rank: int = 32
    rem_alpha: float = 8.0  # alpha / d = 0.25, the paper's ratio (32 / 128)
    distill_weight: float = 20.0
    # Guards against distillation collapse (methods/distill_guards.py); the defaults are the paper's.
    distill_grad: str = "all"
    distill_start: float = 0.0
    distill_ramp: float = 0.0
    seed: int = 0
    # > 0: a checkpoint every this many steps, from which `dartlm compare` resumes a killed run (long benchmarks).
    save_every: int = 0
    methods: tuple[str, ...] = METHODS

    @classmethod
    def quick(cls) -> "DemoSettings":
        """About a minute: a smoke run of the whole pipeline, not a result."""
        return cls(task_steps=2, max_value=20, n_train=400, n_val=20, n_test=24, hidden=64, layers=2,
                   base_steps=30, train_steps=30, batch_size=16, num_thought_tokens=4, rem_rank=8, rem_alpha=2.0,
                   lora_rank=8, lora_alpha=2.0)


def apply_settings(settings: DemoSettings, assignments: list[str] | tuple[str, ...]) -> DemoSettings:
    """The settings with `field=value` assignments applied (`--set` on the command line).

    Values are read as YAML and checked against the field's type like a config file's (so `lr=3e-3`,
    `lora_targets=all` and `n_train=16000` work, and `lr=x` or an unknown field is one clear error).
    """
    import dataclasses
    import typing

    import yaml

    from dartlm.config import ConfigError, coerce_value

    hints = typing.get_type_hints(DemoSettings)
    changes: dict = {}
    for assignment in assignments:
        name, sep, text = assignment.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"--set {assignment!r}: expected field=value")
        if name not in hints:
            raise ConfigError(f"--set {assignment!r}: unknown demo setting {name!r}; known: {', '.join(hints)}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {assignment!r}: invalid value: {str(err).splitlines()[0]}") from None
        if name == "methods":
            value = tuple(str(value).split(",")) if not isinstance(value, list) else tuple(value)
            unknown = [m for m in value if m not in METHODS]
            if unknown:
                raise ConfigError(f"--set {assignment!r}: unknown method(s) {', '.join(unknown)}; known: "
                                  f"{', '.join(METHODS)}")
        else:
            value = coerce_value(hints[name], value, "--set", name)
        changes[name] = value
    return dataclasses.replace(settings, **changes)


def method_config(settings: DemoSettings, method: str, data_dir: Path, run_dir: Path, base_dir: Path | None,
                  steps: int) -> Config:
    """The run config of one method: same model, data and budget for all.

    base_dir None: a model trained from scratch (every weight trains); otherwise LoRA fine-tuning of that base.
    """
    config = Config()
    if base_dir is None:
        config.model.tokenizer = str(data_dir / "tokenizer")
        config.model.architecture = {
            "model_type": "llama", "vocab_size": settings.vocab_size, "hidden_size": settings.hidden,
            "intermediate_size": 4 * settings.hidden, "num_hidden_layers": settings.layers,
            "num_attention_heads": settings.heads, "num_key_value_heads": settings.heads,
            "max_position_embeddings": 512, "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 0,
        }
        config.lora.enabled = False  # from scratch: every weight trains
    else:
        config.model.name_or_path = str(base_dir)
        config.lora.rank, config.lora.alpha = settings.lora_rank, settings.lora_alpha
        config.lora.target_modules = list(LORA_TARGETS[settings.lora_targets])
    config.rem.rank, config.rem.alpha = settings.rem_rank, settings.rem_alpha
    config.method.name = method
    config.method.num_thought_tokens = settings.num_thought_tokens
    config.method.distill_weight = settings.distill_weight
    config.method.distill_grad = settings.distill_grad
    config.method.distill_start, config.method.distill_ramp = settings.distill_start, settings.distill_ramp
    config.data.train_path = str(data_dir / "train.txt")
    config.data.max_length = 512
    t = config.training
    t.output_dir, t.max_steps, t.batch_size, t.lr = str(run_dir), steps, settings.batch_size, settings.lr
    save = settings.save_every if 0 < settings.save_every < steps else steps
    t.weight_decay, t.seed, t.save_steps, t.logging_steps = 0.0, settings.seed, save, max(1, min(50, steps))
    t.warmup_ratio = settings.warmup_ratio
    return config.validate("demo")


def base_spec(settings: DemoSettings):
    """The general arithmetic base of these settings (model/base_lm.py); the same for every seed."""
    from dartlm.model.base_lm import BaseModelSpec

    # 200k lines for 3,000 steps of 32 (about 0.9 passes over it); short runs (smoke tests) get a smaller corpus.
    lines = min(200_000, max(2_000, 3 * settings.base_steps * settings.batch_size))
    return BaseModelSpec(layers=settings.layers, hidden=settings.hidden, heads=settings.heads,
                         vocab_size=settings.vocab_size, lines=lines, steps=settings.base_steps,
                         batch_size=settings.batch_size, seed=settings.base_seed)


def shared_base(settings: DemoSettings, log=print) -> Path | None:
    """The cached general arithmetic base (built first if missing), or None when the settings use none."""
    from dartlm.model.base_lm import ensure_base
    from dartlm.model.loading import resolve_model_source

    if sum(map(bool, (settings.base_steps, settings.pretrain_steps, settings.base_model))) > 1:
        raise ValueError("base_steps (a general arithmetic base), base_model (a pretrained model) and pretrain_steps "
                         "(a base trained on the task's text) exclude each other")
    if settings.base_model:
        return Path(resolve_model_source(settings.base_model))  # an alias is converted once, here
    return ensure_base(base_spec(settings), log=log) if settings.base_steps else None


def pretrain_base(settings: DemoSettings, data_dir: Path, out_dir: Path, log) -> Path:
    """The shared base model: a from-scratch LM trained on the training problems' text (CoT included)."""
    run_dir, base_dir = out_dir / "runs" / "base", out_dir / "models" / "base"
    log(f"\n== base model: {settings.layers} layers, hidden {settings.hidden}, trained from scratch for "
        f"{settings.pretrain_steps} steps of {settings.batch_size} ==")
    config = method_config(settings, "cot", data_dir, run_dir, None, settings.pretrain_steps)
    config.data.omit_last_step = False  # the base reads the problems whole
    train(config, run_dir, overwrite=True)
    export_run(run_dir, base_dir, force=True, log=log)
    return base_dir


DATA_MANIFEST = "dartlm_data.json"
# The settings the generated data depend on; a data folder made under others is never reused.
DATA_FIELDS = ("task_steps", "max_value", "operations", "n_train", "n_val", "n_test", "vocab_size", "seed")


def data_identity(settings: DemoSettings) -> dict:
    return {name: getattr(settings, name) for name in DATA_FIELDS}


def prepare_data(settings: DemoSettings, data_dir: Path) -> dict[str, list]:
    """Splits written as iCoT text files, and a tokenizer trained on the training text.

    The folder is written whole under a temporary name with its manifest (the settings it was made from, every
    file's sha256) and renamed into place.
    """
    from dartlm.storage import file_hashes, remove_tree, replace_folder, staging_folder, write_json

    task = SyntheticTask(steps=settings.task_steps, max_value=settings.max_value, operations=settings.operations,
                         seed=settings.seed)
    splits = generate_splits(task, settings.n_train, settings.n_val, settings.n_test)
    staged = staging_folder(data_dir)
    try:
        for name, examples in splits.items():
            write_icot(examples, staged / f"{name}.txt")
        texts = [f"{e.question} {e.cot} Answer: {e.answer}" for e in splits["train"]]
        train_tokenizer(texts, vocab_size=settings.vocab_size).save_pretrained(staged / "tokenizer")
        write_json(staged / DATA_MANIFEST, {"settings": data_identity(settings), "files": file_hashes(staged)})
        replace_folder(staged, data_dir)
    finally:
        remove_tree(staged)
    return splits


def check_data(settings: DemoSettings, data_dir: Path) -> str:
    """The fingerprint of an existing data folder made from these settings; refuses any other folder."""
    from dartlm.config import ConfigError
    from dartlm.storage import digest, file_hashes

    path = data_dir / DATA_MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        made_from, listed = manifest["settings"], manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{data_dir}: not a data folder written by this version of dartlm (no readable "
                          f"{DATA_MANIFEST}); use another --output-dir or delete it") from None
    wanted = data_identity(settings)
    differing = [k for k in wanted if made_from.get(k) != wanted[k]]
    if differing:
        raise ConfigError(f"{data_dir}: holds data made with other settings ({', '.join(differing)} differ); use "
                          "another --output-dir")
    files = file_hashes(data_dir, exclude=(DATA_MANIFEST,))
    if files != listed:
        changed = sorted(n for n in set(files) | set(listed) if files.get(n) != listed.get(n))
        raise ConfigError(f"{data_dir}: files changed since the data were written ({', '.join(changed[:5])}); "
                          "delete the folder to regenerate it")
    return digest(files)


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
                                [e.question for e in splits[eval_split][:LATENCY_ITEMS]], log=log)
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
