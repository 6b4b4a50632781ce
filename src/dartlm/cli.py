"""The `dartlm` command line."""

from __future__ import annotations

import argparse
import sys


def _params(args) -> int:
    from dartlm.config import load_config
    from dartlm.params import parameter_report

    print(parameter_report(load_config(args.config, args.overrides)).table())
    return 0


def _generate(args) -> int:
    from dartlm.generate import generate_answers, load_exported

    model, tokenizer, spec = load_exported(args.model_dir)
    for answer in generate_answers(model, tokenizer, spec, args.questions, max_new_tokens=args.max_new_tokens):
        print(answer)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dartlm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    params = commands.add_parser("params", help="trainable-parameter breakdown of a config (no weights loaded)")
    params.add_argument("config", help="YAML file or packaged config name, e.g. paper/llama-3.2-1b-dart")
    params.add_argument("overrides", nargs="*", help="section.key=value")
    params.set_defaults(run=_params)

    generate = commands.add_parser("generate", help="answer questions with an exported model")
    generate.add_argument("model_dir")
    generate.add_argument("questions", nargs="+")
    generate.add_argument("--max-new-tokens", type=int, default=32)
    generate.set_defaults(run=_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dartlm.config import ConfigError
    from dartlm.data.readers import DataError

    try:
        return args.run(args)
    except (ConfigError, DataError, FileNotFoundError) as err:
        print(f"dartlm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
