"""The `dartlm` command line: train, export, generate, eval, report, params."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path


def int_list(text: str, option: str) -> list[int]:
    """A comma-separated list of distinct integers, or one clear error naming the option."""
    from dartlm.config import ConfigError

    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if len(set(values)) != len(values):
        raise ConfigError(f"{option} {text!r}: a value is given twice")
    return values


def _train(args) -> int:
    from dartlm.config import load_config, resolve_config_path
    from dartlm.training.run import train

    config = load_config(args.config, args.overrides)
    if args.skip_invalid:
        config.data.skip_invalid = True
    run_dir = Path(args.output_dir or config.training.output_dir or f"runs/{resolve_config_path(args.config).stem}")
    config.training.output_dir = str(run_dir)
    train(config, run_dir, resume=args.resume or False, overwrite=args.overwrite)
    print(f"run folder: {run_dir}")
    return 0


def _export(args) -> int:
    from dartlm.exports.run import export_run

    results = [_read_eval_summary(Path(path)) for path in args.results or ()]
    export_run(Path(args.run_dir), Path(args.out_dir), checkpoint=args.checkpoint, force=args.force,
               tolerance=args.tolerance, results=results, dtype=args.dtype)
    print(f"exported: {args.out_dir}")
    return 0


def _read_eval_summary(path: Path) -> dict:
    """A summary JSON written by `dartlm eval`, for the model card."""
    import json

    from dartlm.training.run import RunError

    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise RunError(f"{path}: cannot read an eval summary: {err}") from None
    if not isinstance(summary, dict) or "accuracy" not in summary:
        raise RunError(f"{path}: not a summary written by `dartlm eval` (no 'accuracy' field)")
    return summary


def _lm_eval_task(args) -> int:
    from dartlm.eval.lm_eval_task import write_lm_eval_task

    files = write_lm_eval_task(Path(args.model_dir), args.benchmark, Path(args.data_path), Path(args.output),
                               limit=args.limit, name=args.name)
    print(f"wrote {files.yaml} ({files.items} items); run it with:\n  lm_eval --model hf --model_args "
          f"pretrained={args.model_dir} --tasks {files.name} --include_path {args.output} --batch_size 1")
    return 0


def _probe(args) -> int:
    from dartlm.experiments.probe import run_probe

    layers = None if args.layers == "all" else int_list(args.layers, "--layers")
    result = run_probe(Path(args.model_dir), Path(args.data), Path(args.output),
                       fit_path=Path(args.fit_data) if args.fit_data else None, benchmark=args.benchmark,
                       limit=args.limit, fit_limit=args.fit_limit, layers=layers)
    print((Path(args.output) / "probe.md").read_text(encoding="utf-8"))
    print(f"wrote {args.output}/probe.json, probe.png, probe.md ({len(result['probes'])} targets)")
    return 0


def _onnx(args) -> int:
    from dartlm.engines.onnx import export_onnx

    export_onnx(Path(args.model_dir), Path(args.out_dir), force=args.force, opset=args.opset, quantize=args.quantize)
    print(f"ONNX model: {args.out_dir} (evaluate it with: dartlm eval {args.out_dir} --engine onnxruntime ...)")
    return 0


def _gguf(args) -> int:
    from dartlm.engines.llamacpp import export_gguf

    export_gguf(Path(args.model_dir), Path(args.out_dir), outtype=args.outtype, converter=args.converter,
                force=args.force, threads=args.threads)
    print(f"GGUF model: {args.out_dir} (evaluate it with: dartlm eval {args.out_dir} --engine llamacpp ...)")
    return 0


def _generate(args) -> int:
    from dartlm.generate import generate, load_exported
    from dartlm.thinking import thinking_for

    model, tokenizer, spec = load_exported(args.model_dir)
    for g in generate(model, tokenizer, spec, args.questions, max_new_tokens=args.max_new_tokens):
        if g.cot:
            print(f"CoT: {g.cot}")
        print(f"Answer: {g.answer}" if thinking_for(spec).writes_chain else g.answer)
    return 0


def _eval(args) -> int:
    from dartlm.eval.evaluate import EvalSettings, evaluate

    output = Path(args.output or f"results/{Path(args.model_dir).name}-{args.benchmark}.json")
    settings = EvalSettings(
        benchmark=args.benchmark, data_path=args.data_path, limit=args.limit, batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens, latency_items=args.latency_items, dtype=args.dtype,
        device=args.device or ("cuda" if args.engine == "torch" and _cuda() else "cpu"),
        without_thoughts=args.without_thoughts, engine=args.engine,
    )
    results = evaluate(Path(args.model_dir), settings, output)
    acc, lat = results["accuracy"], results["latency_ms"]
    print(f"{results['benchmark']}: n={results['n']} accuracy strict {100 * acc['strict']:.1f}% "
          f"flexible {100 * acc['flexible']:.1f}%; latency median {lat.get('median', float('nan')):.1f} ms "
          f"p90 {lat.get('p90', float('nan')):.1f} ms (batch size 1, n={lat['n']})")
    print(f"results: {output} (per item: {output.with_suffix('.jsonl')})")
    return 0


def _report(args) -> int:
    from dartlm.eval.report import load_results, markdown_table, plot_accuracy_vs_latency

    results = load_results([Path(p) for p in args.results])
    table = markdown_table(results, args.metric)
    print(table)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(table + "\n", encoding="utf-8")
        plot_accuracy_vs_latency(results, out.with_suffix(".png"), args.metric)
        print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.png')}")
    return 0


def _bench(args) -> int:
    from dartlm.experiments.bench import run_bench

    run_bench(args.kind, config=args.config, overrides=args.overrides, model=args.model, benchmark=args.benchmark,
              data_path=args.data_path, limit=args.limit, num_thoughts=args.num_thought_tokens,
              batch_size=args.batch_size, steps=args.steps, device=args.device, output=args.output,
              settings={k: v for k, v in vars(args).items() if k != "run"})
    return 0


def _demo(args) -> int:
    from dartlm.experiments.demo import run_demo

    run_demo(_experiment_settings(args), Path(args.output_dir), eval_split=args.eval_split)
    return 0


def _experiment_settings(args):
    """The experiment settings of the command's flags and `--set` assignments (dartlm.experiments.settings)."""
    from dartlm.experiments.settings import settings_from_options

    return settings_from_options(vars(args), args.set or (), quick=args.quick)


def _base(args) -> int:
    from dartlm.experiments.settings import base_spec
    from dartlm.model.base_lm import ensure_base

    print(f"base model: {ensure_base(base_spec(_experiment_settings(args)), rebuild=args.rebuild, shipped=args.shipped)}")
    return 0


def _compare(args) -> int:
    from dartlm.experiments.jobs import run_comparison
    from dartlm.experiments.variants import resolve_variants

    variants = resolve_variants(args.variants.split(","))
    seeds = int_list(args.seeds, "--seeds")
    run_comparison(variants, _experiment_settings(args), seeds, Path(args.output_dir), workers=args.workers,
                   latency_items=args.latency_items, split=args.eval_split)
    print(f"results: {Path(args.output_dir) / 'comparison.json'}, .md and .png")
    return 0


def _sweep(args) -> int:
    from dartlm.experiments.jobs import run_comparison
    from dartlm.experiments.report import plot_sweep
    from dartlm.experiments.variants import sweep_variants

    values = int_list(args.values, "--values")
    seeds = int_list(args.seeds, "--seeds")
    out = Path(args.output_dir)
    summary = run_comparison(sweep_variants(values), _experiment_settings(args), seeds, out, workers=args.workers,
                             latency_items=args.latency_items, split=args.eval_split)
    plot_sweep(summary, out / "sweep.png")
    print(f"results: {out / 'comparison.json'}, .md, and {out / 'sweep.png'}")
    return 0


def _params(args) -> int:
    from dartlm.config import load_config
    from dartlm.params import parameter_report

    print(parameter_report(load_config(args.config, args.overrides)).table())
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dartlm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a method from a YAML config")
    train.add_argument("config", help="YAML file or packaged config name (e.g. tiny/dart)")
    train.add_argument("overrides", nargs="*", help="section.key=value, e.g. training.lr=1e-4")
    train.add_argument("--output-dir", help="the run folder (default: training.output_dir or runs/<config name>)")
    train.add_argument("--resume", nargs="?", const=True, metavar="CHECKPOINT",
                       help="continue the run from its last checkpoint (or from CHECKPOINT)")
    train.add_argument("--overwrite", action="store_true", help="train into a non-empty run folder")
    train.add_argument("--skip-invalid", action="store_true",
                       help="skip malformed data records (counted and reported) instead of stopping at the first")
    train.set_defaults(run=_train)

    export = commands.add_parser("export", help="merge LoRA and REM and write a plain Hugging Face folder")
    export.add_argument("run_dir")
    export.add_argument("out_dir")
    export.add_argument("--checkpoint", help="a checkpoint folder of the run instead of its final weights")
    export.add_argument("--force", action="store_true", help="overwrite a non-empty output folder")
    export.add_argument("--tolerance", type=float, default=None,
                        help="max |logit difference| allowed (float64, relative to max |logit|), as a multiple "
                             "of the difference fp32 rounding alone makes (default 1)")
    export.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="weights of the exported model (default: the run's model.dtype); the merge is checked in "
                             "float64 whatever this is")
    export.add_argument("--results", nargs="+", metavar="EVAL_JSON",
                        help="`dartlm eval` summaries to put in the model card (README.md)")
    export.set_defaults(run=_export)

    onnx = commands.add_parser("onnx", help="an exported model as one ONNX graph with a KV cache, for ONNX Runtime "
                                             "(checked against PyTorch before it is written)")
    onnx.add_argument("model_dir", help="a folder written by `dartlm export`")
    onnx.add_argument("out_dir")
    onnx.add_argument("--force", action="store_true", help="overwrite a non-empty output folder")
    onnx.add_argument("--opset", type=int, default=17)
    onnx.add_argument("--quantize", default="none", choices=["none", "int8"],
                      help="int8: dynamic quantisation of the checked graph (int8 weights, activations on the fly)")
    onnx.set_defaults(run=_onnx)

    from dartlm.engines import CONVERTER_ENV, ENGINES, GGUF_OUTTYPES

    gguf = commands.add_parser("gguf", help="an exported model as a GGUF file for llama.cpp, through llama.cpp's own "
                                             "converter (checked against PyTorch before it is written)")
    gguf.add_argument("model_dir", help="a folder written by `dartlm export`")
    gguf.add_argument("out_dir")
    gguf.add_argument("--outtype", default="f16", choices=GGUF_OUTTYPES,
                      help="f32/f16/bf16/q8_0 written by the converter; q4_K_M by llama.cpp's quantiser from f32")
    gguf.add_argument("--converter",
                      help=f"llama.cpp's folder or its convert_hf_to_gguf.py (default: ${CONVERTER_ENV})")
    gguf.add_argument("--threads", type=int, help="llama.cpp's threads (default: torch's)")
    gguf.add_argument("--force", action="store_true", help="overwrite a non-empty output folder")
    gguf.set_defaults(run=_gguf)

    generate = commands.add_parser("generate", help="answer questions with an exported model")
    generate.add_argument("model_dir")
    generate.add_argument("questions", nargs="+")
    generate.add_argument("--max-new-tokens", type=int, default=None)
    generate.set_defaults(run=_generate)

    evaluate = commands.add_parser("eval", help="accuracy and latency of an exported model on a benchmark")
    evaluate.add_argument("model_dir")
    evaluate.add_argument("--benchmark", required=True, help="gsm8k, gsm-hard, svamp, multiarith, prosqa, commonsenseqa")
    evaluate.add_argument("--data-path", help="the benchmark's local file (without it: the hub, when reachable)")
    evaluate.add_argument("--limit", type=int, help="evaluate the first N items")
    evaluate.add_argument("--batch-size", type=int, default=1, help="1 also times every item (the paper's latency)")
    evaluate.add_argument("--max-new-tokens", type=int)
    evaluate.add_argument("--latency-items", type=int, default=100,
                          help="with --batch-size > 1: items timed one by one afterwards (0: none)")
    evaluate.add_argument("--output", help="summary JSON (per-item records go beside it as .jsonl)")
    evaluate.add_argument("--device", default=None, help="default: cuda when available (cpu for the other engines)")
    evaluate.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    evaluate.add_argument("--without-thoughts", action="store_true",
                          help="Quiet-STaR models: answer from the thought-free state alone (what thinking adds)")
    evaluate.add_argument("--engine", default="torch", choices=ENGINES,
                          help="onnxruntime: MODEL_DIR is a folder written by `dartlm onnx` (CPU, fp32); llamacpp: "
                               "one written by `dartlm gguf` (CPU, batch size 1); the same prompt, greedy loop and "
                               "scoring")
    evaluate.set_defaults(run=_eval)

    task = commands.add_parser("lm-eval-task", help="an lm-evaluation-harness task that scores an exported model "
                               "with its own prompt on a local benchmark file")
    task.add_argument("model_dir")
    task.add_argument("--benchmark", required=True, help="gsm8k, gsm-hard, svamp, multiarith, prosqa, commonsenseqa")
    task.add_argument("--data-path", required=True, help="the benchmark's local file")
    task.add_argument("--output", required=True, help="folder for the task YAML and its data (lm_eval --include_path)")
    task.add_argument("--limit", type=int, help="the first N items")
    task.add_argument("--name", help="task name (default dartlm_<benchmark>)")
    task.set_defaults(run=_lm_eval_task)

    probe = commands.add_parser("probe", help="logit lens and linear probes of the hidden states at the thought "
                                "positions and z_N of an exported model")
    probe.add_argument("model_dir")
    probe.add_argument("--data", required=True, help="held-out items (a local benchmark file)")
    probe.add_argument("--fit-data", help="items the probes are fitted on (default: 70%% of --data, the rest held out)")
    probe.add_argument("--benchmark", default="gsm8k")
    probe.add_argument("--limit", type=int, help="the first N held-out items")
    probe.add_argument("--fit-limit", type=int, help="the first N fitting items")
    probe.add_argument("--layers", default="all", help="all, or comma-separated layer indices (0 = embeddings)")
    probe.add_argument("--output", default="probe", help="folder for probe.json, probe.png and probe.md")
    probe.set_defaults(run=_probe)

    report = commands.add_parser("report", help="a Table-1-style table and an accuracy-vs-latency plot")
    report.add_argument("results", nargs="+", help="summary JSON files written by dartlm eval")
    report.add_argument("--output", help="write OUTPUT.md and OUTPUT.png")
    report.add_argument("--metric", default="strict", choices=["strict", "flexible"])
    report.set_defaults(run=_report)

    bench = commands.add_parser("bench", help="cost benchmarks: inference latency or training step/FLOPs/memory")
    bench.add_argument("kind", choices=["inference", "training"])
    source = bench.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a base model: hub name, local folder or alias such as smollm2-135m")
    source.add_argument("--config", help="a config whose model section to use (e.g. tiny/dart)")
    bench.add_argument("overrides", nargs="*", help="section.key=value for --config")
    bench.add_argument("--benchmark", default="gsm8k", help="inference: the questions (and reference CoTs)")
    bench.add_argument("--data-path", required=True, help="inference: benchmark file; training: training data file")
    bench.add_argument("--limit", type=int, default=100)
    bench.add_argument("--num-thought-tokens", type=int, default=20)
    bench.add_argument("--batch-size", type=int, default=4, help="training: examples per step")
    bench.add_argument("--steps", type=int, default=10, help="training: timed steps per method")
    bench.add_argument("--device", default="cuda" if _cuda() else "cpu")
    bench.add_argument("--output", help="result JSON (a .md table is written beside it)")
    bench.set_defaults(run=_bench)

    def regime_options(sub):
        sub.add_argument("--base-steps", type=int,
                         help="fine-tune with LoRA a base pretrained this many steps on general arithmetic text "
                              "(cached; the paper's regime); 0: train from scratch")
        sub.add_argument("--lora-targets", choices=["attention", "all"], help="with a base: LoRA on attention only "
                         "(the paper) or also on the MLP")
        sub.add_argument("--layers", type=int, help="decoder layers of the model (and of its base)")
        sub.add_argument("--lr", type=float, help="learning rate of every method")
        sub.add_argument("--batch-size", type=int, help="training examples per step of every method")
        sub.add_argument("--set", action="append", metavar="FIELD=VALUE",
                         help="any demo setting (dartlm.experiments.settings.DemoSettings), e.g. --set base_seed=1 --set "
                              "warmup_ratio=0.1; repeatable, applied last")

    demo = commands.add_parser("demo", help="DART against No-CoT, CoT and PauseFT on a synthetic task, on a CPU")
    demo.add_argument("--quick", action="store_true", help="a one-minute smoke run")
    demo.add_argument("--output-dir", default="demo")
    demo.add_argument("--eval-split", default="test", choices=["test", "val"], help="tune on val, report test")
    demo.add_argument("--task-steps", type=int)
    demo.add_argument("--max-value", type=int)
    demo.add_argument("--operations")
    demo.add_argument("--train-steps", type=int)
    demo.add_argument("--seed", type=int)
    demo.add_argument("--pretrain-steps", type=int,
                      help="train a shared base first for N steps, then fine-tune it with LoRA per method")
    demo.add_argument("--methods", help="comma-separated subset of nocot,cot,pause,dart")
    demo.add_argument("--distill-weight", type=float, help="DART's lambda (default 20, the paper's)")
    regime_options(demo)
    demo.set_defaults(run=_demo)

    base = commands.add_parser("base", help="build (once, cached) the small base model pretrained on general "
                                            "arithmetic text that the demo fine-tunes")
    regime_options(base)
    base.add_argument("--quick", action="store_true", help="the base of `dartlm demo --quick`")
    which = base.add_mutually_exclusive_group()
    which.add_argument("--rebuild", action="store_true", help="train it from scratch on this machine, replacing the "
                       "cached one (the shipped base is used otherwise)")
    which.add_argument("--shipped", action="store_true", help="put the base shipped with dartlm back in the cache")
    base.set_defaults(run=_base)

    def comparison_options(sub):
        sub.add_argument("--base-model", help="fine-tune this pretrained model (hub name, folder or alias such as "
                                              "smollm2-135m) with LoRA instead")
        sub.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (task data and model init)")
        sub.add_argument("--train-steps", type=int, help="steps per run (default: the demo's)")
        sub.add_argument("--distill-weight", type=float, help="DART's lambda (default: the demo's)")
        sub.add_argument("--workers", type=int, default=1,
                         help="runs trained in parallel, one thread each (latency is timed afterwards, alone)")
        sub.add_argument("--latency-items", type=int, default=100, help="test questions timed at batch size 1")
        sub.add_argument("--save-every", type=int, help="a checkpoint every N steps: a killed run resumes from it "
                         "when the command is run again")
        sub.add_argument("--quick", action="store_true", help="the demo's one-minute settings (a smoke run)")
        sub.add_argument("--eval-split", default="test", choices=["test", "val"], help="choose on val, report on test")
        regime_options(sub)

    compare = commands.add_parser("compare", help="methods and DART ablations on the demo's synthetic task, "
                                                  "over seeds: one table and one plot")
    compare.add_argument("--variants", default="table1,table3",
                         help="comma-separated variants or groups (table1, table3, demo); see dartlm.experiments.variants")
    compare.add_argument("--output-dir", default="comparison")
    comparison_options(compare)
    compare.set_defaults(run=_compare)

    sweep = commands.add_parser("sweep", help="DART for a list of C (ST tokens): accuracy and latency against C")
    sweep.add_argument("--values", default="0,1,2,4,8,16", help="comma-separated C values")
    sweep.add_argument("--output-dir", default="sweep")
    comparison_options(sweep)
    sweep.set_defaults(run=_sweep)

    params = commands.add_parser("params", help="trainable-parameter breakdown of a config (no weights loaded)")
    params.add_argument("config", help="YAML file or packaged config name, e.g. paper/llama-3.2-1b-dart")
    params.add_argument("overrides", nargs="*", help="section.key=value")
    params.set_defaults(run=_params)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # PEFT 0.21 calls a property that transformers 5 deprecated; the warning means nothing to users.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
    # Imported here so that `dartlm --help` stays fast; these are the errors a user can act on.
    from dartlm.config import ConfigError
    from dartlm.data.readers import DataError
    from dartlm.eval.evaluate import ResumeMismatchError
    from dartlm.model.base_lm import ShippedBaseError
    from dartlm.model.export import ExportError, MergeMismatchError
    from dartlm.model.offline import OfflineModelError
    from dartlm.model.rem import UnsupportedArchitectureError
    from dartlm.storage import LockedError
    from dartlm.thinking import PromptNotExpressibleError
    from dartlm.training.run import RunError
    from dartlm.training.trainer import NonFiniteLossError

    try:
        return args.run(args)
    except (ConfigError, DataError, RunError, UnsupportedArchitectureError, FileNotFoundError, ExportError,
            ResumeMismatchError, OfflineModelError, PromptNotExpressibleError, LockedError, ShippedBaseError) as err:
        print(f"dartlm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, MergeMismatchError) as err:
        print(f"dartlm {args.command}: stopped: {err}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
