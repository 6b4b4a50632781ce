"""The bf16 path (what GPU users train and ship) exercised on CPU: agreement of a bf16 export with the fp32 export
of the same run, and the peak memory of a bf16 DART step against an fp32 one.

1. Agreement: the demo's DART (the shipped base, LoRA + REM, the demo's data), exported twice from the same run:
   fp32 and bf16 weights, both through the float64 merge check; greedy answers on the test split, item by item.
   Twice: trained a few steps under bf16 autocast (CPU bf16 matmuls are slow without native support: about 16 s a
   step here, against about 0.3 s in fp32), and trained the demo's 500 steps in fp32 (what a user would ship).
2. Memory: DART training steps on the offline SmolLM2-135M (LoRA r 128 + REM d 128, batch 4), base weights in fp32
   against base weights in bf16 with bf16 autocast, each in a fresh process (peak RSS, and its rise over the
   process with the model loaded).

    python benchmarks/bf16_cpu.py --output benchmarks/results/bf16-cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path


def agreement(folder: Path, steps: int, items: int, autocast: bool) -> dict:
    import torch

    from dartlm.experiments.data import prepare_data
    from dartlm.experiments.settings import DemoSettings, method_config, shared_base
    from dartlm.eval.benchmarks import load_benchmark
    from dartlm.generate import generate, load_exported
    from dartlm.exports.run import export_run
    from dartlm.training.run import train

    settings = dataclasses.replace(DemoSettings(), train_steps=steps)
    if not (folder / "data").is_dir():
        prepare_data(settings, folder / "data")
    config = method_config(settings, "dart", folder / "data", folder / "run", shared_base(settings), steps)
    config.training.bf16 = autocast  # the base weights stay fp32 either way
    train(config, folder / "run", overwrite=True)
    checks = {dtype: export_run(folder / "run", folder / dtype, dtype=dtype, force=True, log=lambda *_: None)
              for dtype in ("float32", "bfloat16")}
    questions = load_benchmark("gsm8k", str(folder / "data" / "test.txt"), limit=items)
    answers = {}
    for dtype, torch_dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        model, tokenizer, spec = load_exported(folder / dtype, dtype=torch_dtype)
        answers[dtype] = [g.answer for g in generate(model, tokenizer, spec, [q.question for q in questions])]
    same = sum(a == b for a, b in zip(answers["float32"], answers["bfloat16"]))
    right = {d: sum(a == q.target for a, q in zip(answers[d], questions)) for d in answers}
    return {"steps": steps, "bf16_autocast": autocast, "items": len(questions), "same_answer": same,
            "accuracy": {d: right[d] / len(questions) for d in right},
            "merge_check": {d: dataclasses.asdict(c) for d, c in checks.items()}}


MEMORY_CHILD = """
import json, resource, sys
from pathlib import Path
from dartlm.config import load_config
from dartlm.training.run import build_model, encode_examples, FeatureDataset, training_arguments
from dartlm.data.sources import load_examples
from dartlm.training.trainer import MethodTrainer
request = json.loads(sys.argv[1])
config = load_config("smollm2/dart", request["overrides"])
run = build_model(config, Path(request["run_dir"]), fresh=True)
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
examples = load_examples(config.data.train_path, omit_last_step=True)[: request["batch"] * request["steps"]]
features = encode_examples(examples, run.tokenizer, run.method, run.thought_id, 512, False)
pad = run.tokenizer.pad_token_id
trainer = MethodTrainer(model=run.model, args=training_arguments(config, Path(request["run_dir"]), run.method),
                        train_dataset=FeatureDataset(features), data_collator=lambda b: run.method.collate(b, pad),
                        method=run.method)
trainer.train()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"loaded_bytes": loaded, "peak_bytes": peak, "rise_bytes": peak - loaded}))
"""


def memory(folder: Path, steps: int, batch: int) -> dict:
    from dartlm.experiments.data import prepare_data
    from dartlm.experiments.settings import DemoSettings

    prepare_data(dataclasses.replace(DemoSettings(), n_train=200), folder / "data")
    common = [f"data.train_path={folder / 'data' / 'train.txt'}", f"training.max_steps={steps}",
              f"training.batch_size={batch}", "training.save_steps=100000", "training.logging_steps=1",
              "training.progress_bar=false"]
    runs = {"float32": common, "bfloat16": common + ["model.dtype=bfloat16", "training.bf16=true"]}
    result = {}
    for name, overrides in runs.items():
        request = {"overrides": overrides, "run_dir": str(folder / f"mem-{name}"), "steps": steps, "batch": batch}
        child = subprocess.run([sys.executable, "-c", MEMORY_CHILD, json.dumps(request)], capture_output=True,
                               text=True, check=False)
        if child.returncode != 0:
            raise RuntimeError(child.stderr[-3000:])
        result[name] = json.loads(child.stdout.strip().splitlines()[-1])
    return {"model": "smollm2-135m (dequantised Q4_1 copy of SmolLM2-135M-Instruct)", "steps": steps,
            "batch_size": batch, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="benchmarks/results/bf16-cpu.json")
    parser.add_argument("--steps", type=int, default=500, help="fp32 DART training steps (the demo's)")
    parser.add_argument("--autocast-steps", type=int, default=20, help="DART training steps under bf16 autocast")
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--memory-steps", type=int, default=3)
    args = parser.parse_args()
    from dartlm.eval.measure import machine_info

    with tempfile.TemporaryDirectory() as folder:
        result = {"agreement_bf16_trained": agreement(Path(folder), args.autocast_steps, args.items, True),
                  "agreement_fp32_trained": agreement(Path(folder), args.steps, args.items, False),
                  "memory": memory(Path(folder), args.memory_steps, 4), "machine": machine_info("cpu"),
                  "self_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
