"""The `dartlm` command line: train, export, generate, params."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path


def _train(args) -> int:
    from dartlm.config import load_config, resolve_config_path
    from dartlm.training.run import train

    config = load_config(args.config, args.overrides)
    run_dir = Path(args.output_dir or config.training.output_dir or f"runs/{resolve_config_path(args.config).stem}")
    config.training.output_dir = str(run_dir)
    train(config, run_dir, resume=args.resume or False, overwrite=args.overwrite)
    print(f"run folder: {run_dir}")
    return 0


def _export(args) -> int:
    from dartlm.training.run import export_run

    export_run(Path(args.run_dir), Path(args.out_dir), checkpoint=args.checkpoint, force=args.force,
               tolerance=args.tolerance)
    print(f"exported: {args.out_dir}")
    return 0


def _generate(args) -> int:
    from dartlm.generate import generate, load_exported

    model, tokenizer, spec = load_exported(args.model_dir)
    for g in generate(model, tokenizer, spec, args.questions, max_new_tokens=args.max_new_tokens):
        if g.cot:
            print(f"CoT: {g.cot}")
        print(f"Answer: {g.answer}" if spec.decode == "cot" else g.answer)
    return 0


def _params(args) -> int:
    from dartlm.config import load_config
    from dartlm.params import parameter_report

    print(parameter_report(load_config(args.config, args.overrides)).table())
    return 0


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
    train.set_defaults(run=_train)

    export = commands.add_parser("export", help="merge LoRA and REM and write a plain Hugging Face folder")
    export.add_argument("run_dir")
    export.add_argument("out_dir")
    export.add_argument("--checkpoint", help="a checkpoint folder of the run instead of its final weights")
    export.add_argument("--force", action="store_true", help="overwrite a non-empty output folder")
    export.add_argument("--tolerance", type=float, default=1e-4, help="max |logit difference| allowed (fp32)")
    export.set_defaults(run=_export)

    generate = commands.add_parser("generate", help="answer questions with an exported model")
    generate.add_argument("model_dir")
    generate.add_argument("questions", nargs="+")
    generate.add_argument("--max-new-tokens", type=int, default=None)
    generate.set_defaults(run=_generate)

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
    from dartlm.config import ConfigError
    from dartlm.data.readers import DataError
    from dartlm.model.rem import UnsupportedArchitectureError
    from dartlm.training.run import RunError

    try:
        return args.run(args)
    except (ConfigError, DataError, RunError, UnsupportedArchitectureError, FileNotFoundError) as err:
        print(f"dartlm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
