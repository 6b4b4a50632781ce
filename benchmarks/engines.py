"""Where DART is deployed: accuracy and latency of exported models in PyTorch, ONNX Runtime and llama.cpp.

Every export (e.g. the No-CoT, PauseFT, DART and CoT exports of one run) is made for each engine setting below,
scored on the same test items by `dartlm eval` (same prompt, greedy loop and scorer), and timed at batch size 1.
Timing is one interleaved pass per engine (the variants side by side, eval/latency.time_interleaved), so the ratios
between variants are measured under the same conditions; engines are timed one after the other.

    python benchmarks/engines.py --exports nocot=runs/nocot/model pause=... dart=... cot=... \\
        --data ../shared/data/.../test.txt --items 200 --latency-items 50 --converter PATH/TO/llama.cpp \\
        --work-dir /tmp/engines --output benchmarks/results/engines-smollm2-135m

Scoring takes most of the time (every export on every engine, one question at a time) and needs no quiet machine:
`--accuracy-only` scores and stops, and several such processes (e.g. one per `--engines` subset) can run side by
side or beside other jobs. Scores are kept per item in the work folder, so the full command afterwards scores
nothing again and only times, on a quiet machine.

The claims checked (the deployment side of DART's case): DART/PauseFT <= 1.02x and CoT/DART >= 3x in latency per
engine, DART/No-CoT beside the prompt-token ratio, and DART's accuracy loss under int8 no larger than No-CoT's.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from dartlm.model.export import MANIFEST_FILE

ENGINE_SETTINGS = {  # name: (engine, how the folder is made)
    "torch fp32": ("torch", None),
    "onnxruntime fp32": ("onnxruntime", "none"),
    "onnxruntime int8": ("onnxruntime", "int8"),
    "llama.cpp f16": ("llamacpp", "f16"),
    "llama.cpp q8_0": ("llamacpp", "q8_0"),
    "llama.cpp q4_K_M": ("llamacpp", "q4_K_M"),
}


def engine_folder(export: Path, work: Path, name: str, label: str, converter: str | None) -> Path:
    """The folder `name` runs for this export, made once (kept in the work folder for a rerun)."""
    engine, kind = ENGINE_SETTINGS[name]
    if engine == "torch":
        return export
    folder = work / name.replace(" ", "-").replace(".", "") / label
    if not (folder / MANIFEST_FILE).is_file():
        if engine == "onnxruntime":
            from dartlm.engines.onnx import export_onnx

            export_onnx(export, folder, force=True, quantize=kind)
        else:
            from dartlm.engines.llamacpp import export_gguf

            export_gguf(export, folder, outtype=kind, converter=converter, force=True)
    return folder


def accuracy(folder: Path, engine: str, data: str, items: int, output: Path) -> dict:
    from dartlm.eval.evaluate import EvalSettings, evaluate

    settings = EvalSettings(benchmark="gsm8k", data_path=data, limit=items, batch_size=1, latency_items=0,
                            engine=engine, warmup=0)
    result = evaluate(folder, settings, output, progress=False)
    return {"strict": 100 * result["accuracy"]["strict"], "flexible": 100 * result["accuracy"]["flexible"],
            "n": result["n"]}


def prompt_tokens(export: Path, questions: list[str]) -> float:
    from dartlm.generate import load_exported, prompt_ids

    _, tokenizer, spec = load_exported(export)
    return statistics.fmean(len(p) for p in prompt_ids(questions, tokenizer, spec))


def claims(rows: dict) -> dict:
    """The deployment claims per engine, from the measured medians and accuracies."""
    found = {}
    for name, variants in rows.items():
        ms = {label: v["latency_ms"]["median"] for label, v in variants.items()}
        entry = {}
        if {"dart", "pause"} <= ms.keys():
            entry["DART/PauseFT latency <= 1.02"] = ms["dart"] / ms["pause"]
        if {"dart", "cot"} <= ms.keys():
            entry["CoT/DART latency >= 3"] = ms["cot"] / ms["dart"]
        if {"dart", "nocot"} <= ms.keys():
            entry["DART/No-CoT latency"] = ms["dart"] / ms["nocot"]
            entry["DART/No-CoT prompt tokens"] = variants["dart"]["prompt_tokens"] / variants["nocot"]["prompt_tokens"]
        found[name] = entry
    if "onnxruntime int8" in rows and "onnxruntime fp32" in rows:
        drop = {label: rows["onnxruntime fp32"][label]["accuracy"]["strict"]
                - rows["onnxruntime int8"][label]["accuracy"]["strict"] for label in rows["onnxruntime int8"]}
        if {"dart", "nocot"} <= drop.keys():
            found["int8"] = {"DART accuracy drop": drop["dart"], "No-CoT accuracy drop": drop["nocot"],
                             "DART's drop <= No-CoT's": drop["dart"] <= drop["nocot"]}
    return found


def table(result: dict) -> str:
    labels = list(result["exports"])
    lines = [f"{result['items']} test items (accuracy, strict %), {result['latency_items']} timed at batch size 1 "
             f"(median ms; variants interleaved within an engine), {result['threads']} threads.", "",
             "| engine | " + " | ".join(f"{label} acc | {label} ms" for label in labels) + " |",
             "|---|" + "---|---|" * len(labels)]
    for name, variants in result["engines"].items():
        cells = []
        for label in labels:
            v = variants.get(label)
            cells += [f"{v['accuracy']['strict']:.1f}", f"{v['latency_ms']['median']:.1f}"] if v else ["–", "–"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| engine | claim | measured |", "|---|---|---|"]
    for name, entry in result["claims"].items():
        lines += [f"| {name} | {claim} | {value:.3f} |" if isinstance(value, float) and not isinstance(value, bool)
                  else f"| {name} | {claim} | {value} |" for claim, value in entry.items()]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = dict(zip(result["engines"], "osD^vP*X"))
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for index, label in enumerate(result["exports"]):
        for name, variants in result["engines"].items():
            if label in variants:
                v = variants[label]
                axis.scatter(v["latency_ms"]["median"], v["accuracy"]["strict"], marker=markers[name],
                             color=f"C{index}", label=f"{label}, {name}")
    axis.set_xscale("log")
    axis.set_xlabel("median latency per question, ms (batch size 1, log scale)")
    axis.set_ylabel("accuracy, strict %")
    axis.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exports", nargs="+", required=True, metavar="LABEL=FOLDER",
                        help="folders written by `dartlm export` (labels nocot, pause, dart, cot enable the claims)")
    parser.add_argument("--data", required=True, help="the test file (the synthetic task's test.txt, or GSM8K's)")
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--latency-items", type=int, default=50)
    parser.add_argument("--engines", default=",".join(ENGINE_SETTINGS), help="comma-separated engine settings")
    parser.add_argument("--converter", help="llama.cpp's folder or its convert_hf_to_gguf.py ($DARTLM_LLAMA_CPP)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", required=True, help="where the engines' folders and per-item scores go")
    parser.add_argument("--output", help="writes <output>.json, .md and .png (required unless --accuracy-only)")
    parser.add_argument("--accuracy-only", action="store_true",
                        help="score every export on every engine (kept in the work folder) and stop: nothing is timed")
    args = parser.parse_args()
    if not (args.output or args.accuracy_only):
        parser.error("--output is required unless --accuracy-only")

    import torch

    from dartlm.eval.benchmarks import load_benchmark
    from dartlm.eval.latency import interleaved_latency
    from dartlm.eval.measure import machine_info

    torch.set_num_threads(args.threads)
    exports = dict(item.split("=", 1) for item in args.exports)
    names = args.engines.split(",")
    unknown = [n for n in names if n not in ENGINE_SETTINGS]
    if unknown:
        parser.error(f"unknown engine setting(s) {unknown}; known: {', '.join(ENGINE_SETTINGS)}")
    work = Path(args.work_dir)
    questions = [i.question for i in load_benchmark("gsm8k", args.data, limit=args.latency_items)]
    tokens = {label: prompt_tokens(Path(folder), questions) for label, folder in exports.items()}
    rows = {}
    for name in names:
        engine, _ = ENGINE_SETTINGS[name]
        folders = {label: engine_folder(Path(folder), work, name, label, args.converter)
                   for label, folder in exports.items()}
        scores = {label: accuracy(folder, engine, args.data, args.items,
                                  work / "scores" / name.replace(" ", "-") / f"{label}.json")
                  for label, folder in folders.items()}
        if args.accuracy_only:
            print(f"{name}: " + ", ".join(f"{label} {r['strict']:.1f}%" for label, r in scores.items()), flush=True)
            continue
        timed = interleaved_latency(folders, questions, threads=args.threads, engine=engine)
        rows[name] = {label: {"accuracy": scores[label], "prompt_tokens": tokens[label], **timed["variants"][label],
                              "folder": str(folders[label])} for label in exports}
        print(f"{name}: " + ", ".join(f"{label} {r['accuracy']['strict']:.1f}% {r['latency_ms']['median']:.1f} ms"
                                      for label, r in rows[name].items()), flush=True)
    if args.accuracy_only:
        return
    result = {"machine": machine_info("cpu"), "exports": exports, "data": args.data, "items": args.items,
              "latency_items": args.latency_items, "threads": args.threads, "engines": rows, "claims": claims(rows)}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    output.with_suffix(".md").write_text(table(result) + "\n", encoding="utf-8")
    plot(result, output.with_suffix(".png"))
    print(table(result))


if __name__ == "__main__":
    main()
