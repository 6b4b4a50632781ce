"""How far a correct merge is from the export check's tolerance, and how far a wrong one is, by model size.

For each model: the base (real weights for smollm2-135m, random-initialised from the config otherwise) gets `<st>`,
LoRA r = 128 / alpha 32 and REM d = 128 / alpha 32 as in the paper, the adapters drawn with std 0.03 (the size seen
in trained SmolLM2 runs), and then:
- the old check: the max |logit difference| between adapter model and merged model, both in fp32;
- the new check (dartlm.model.export.merge_with_check): float64, relative to max |logit|;
- a wrong merge (REM dropped instead of folded in), under the new check.

    python benchmarks/merge_margin.py --models smollm2-135m,llama-3.2-1b --output benchmarks/results/merge-margin.json
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from dartlm.config import load_config
from dartlm.eval.measure import machine_info
from dartlm.generate import left_padded, prompt_ids
from dartlm.methods import get_method
from dartlm.model import export as export_module
from dartlm.model.export import DEFAULT_TOLERANCE, merge_adapters, merge_with_check
from dartlm.model.loading import build_meta_model, load_base_model, load_tokenizer
from dartlm.training.prepare import prepare_model
from dartlm.model.rem import rem_wrappers
from dartlm.exports.run import PROBE_QUESTIONS

CONFIGS = {"smollm2-135m": "smollm2/dart", "llama-3.2-1b": "paper/llama-3.2-1b-dart"}


def adapter_model(name: str, std: float):
    config = load_config(CONFIGS[name], ["model.dtype=float32", "lora.rank=128", "rem.rank=128"])
    if name == "smollm2-135m":
        base = load_base_model(config.model)
        tokenizer = load_tokenizer(config.model)
    else:  # no weights offline: the architecture, random-initialised; the tokenizer of the offline model
        from transformers import AutoModelForCausalLM

        meta = build_meta_model(config.model)
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_config(meta.config, dtype=torch.float32)
        tokenizer = load_tokenizer(load_config("smollm2/dart").model)
    method = get_method(config.method)
    model, _ = prepare_model(base, tokenizer, config, method)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    spec = method.prompt_spec()
    probe = left_padded(prompt_ids(PROBE_QUESTIONS, tokenizer, spec), tokenizer.pad_token_id)
    return model.eval(), probe


@torch.no_grad()
def fp32_difference(model, probe) -> float:
    ids, mask = probe["input_ids"], probe["attention_mask"]
    reference = model(input_ids=ids, attention_mask=mask).logits
    merged = merge_adapters(copy.deepcopy(model))
    logits = merged(input_ids=ids, attention_mask=mask).logits
    return (reference - logits).abs()[mask.bool()].max().item()


def drop_rem(model):
    """A wrong merge: REM removed instead of folded into the weights."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if child in rem_wrappers(model):
                setattr(parent, child_name, child.proj)


def measure(name: str, std: float) -> dict:
    model, probe = adapter_model(name, std)
    parameters = sum(p.numel() for p in model.parameters())
    old = fp32_difference(model, probe)
    wrong = copy.deepcopy(model)
    _, check = merge_with_check(model, probe, tolerance=float("inf"))
    original = export_module.merge_rem
    export_module.merge_rem = drop_rem
    try:
        _, wrong_check = merge_with_check(wrong, probe, tolerance=float("inf"))
    finally:
        export_module.merge_rem = original
    return {"model": name, "parameters": parameters, "adapter_std": std, "probe_tokens": list(probe["input_ids"].shape),
            "fp32_max_abs_difference": old, "float64_relative_difference": check.difference,
            "fp32_rounding_relative": check.fp32_rounding,
            "wrong_merge_float64_relative_difference": wrong_check.difference, "tolerance": DEFAULT_TOLERANCE}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="smollm2-135m,llama-3.2-1b")
    parser.add_argument("--std", type=float, default=0.03)
    parser.add_argument("--output", default="benchmarks/results/merge-margin.json")
    args = parser.parse_args()
    rows = [measure(name, args.std) for name in args.models.split(",")]
    lines = ["| model | parameters | old check: fp32 max abs diff (bound 1e-4) | new check: float64 relative diff | "
             "bound: fp32 rounding of the model | margin | wrong merge (REM dropped): float64 relative diff |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        bound = r["tolerance"] * r["fp32_rounding_relative"]
        margin = f"{bound / r['float64_relative_difference']:.3g}x" if r["float64_relative_difference"] else "exact"
        lines.append(f"| {r['model']} | {r['parameters']:,} | {r['fp32_max_abs_difference']:.3g} | "
                     f"{r['float64_relative_difference']:.3g} | {bound:.3g} | {margin} | "
                     f"{r['wrong_merge_float64_relative_difference']:.3g} ({r['wrong_merge_float64_relative_difference'] / bound:.3g}x the bound) |")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "machine": machine_info("cpu")}, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
