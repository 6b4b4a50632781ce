"""Memory per GPU for DART training (LoRA + REM, base frozen in bf16) under DDP, DeepSpeed ZeRO-2, ZeRO-3 and FSDP
full shard, from parameter counts on the meta device (no weights are loaded).

Per GPU, with G GPUs, N_b frozen base parameters (bf16, 2 bytes), N_t trainable parameters (LoRA and REM in fp32:
4 bytes of weight, 4 of gradient, 8 of Adam moments = 16 bytes) and U the largest unit a sharded run gathers whole
(a decoder layer, or the root unit with the embeddings and the head):

    DDP                     2 N_b + 16 N_t
    ZeRO-2                  2 N_b + 4 N_t + 12 N_t / G        (gradients and Adam moments sharded)
    ZeRO-3, FSDP full shard (2 N_b + 16 N_t) / G + 2 U        (everything sharded; one unit gathered at a time)

Activations are not included: they depend on batch size and sequence length, not on the sharding mode (DART's
early L_CoT backward keeps one pathway's activations at the peak, not two).

    python benchmarks/sharding_memory.py --output benchmarks/results/sharding-memory
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from dartlm.config import load_config
from dartlm.model.loading import architecture_config
from dartlm.params import parameter_report

# Llama-3.1-8B's published architecture (config.json of meta-llama/Llama-3.1-8B); no paper config uses it.
LLAMA_8B = {"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
            "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
            "bos_token_id": 128000, "eos_token_id": 128001}
MODELS = {"Llama-3.2-1B": ("paper/llama-3.2-1b-dart", None), "Llama-3.2-3B": ("paper/llama-3.2-3b-dart", None),
          "Llama-3.1-8B": ("paper/llama-3.2-3b-dart", LLAMA_8B)}
GPUS = (1, 2, 8)
GIB = 1024**3


def largest_unit(config) -> int:
    """Parameters of the largest FSDP unit: one decoder layer, or the root (embeddings, final norm, head)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(architecture_config(config.model))
    layers = model.model.layers
    layer = sum(p.numel() for p in layers[0].parameters())
    inside = {id(p) for p in layers.parameters()}
    root = sum(p.numel() for p in model.parameters() if id(p) not in inside)
    return max(layer, root)


def memory(base: int, trainable: int, unit: int, gpus: int) -> dict[str, float]:
    return {
        "DDP": 2 * base + 16 * trainable,
        "ZeRO-2": 2 * base + 4 * trainable + 12 * trainable / gpus,
        "ZeRO-3 / FSDP": (2 * base + 16 * trainable) / gpus + 2 * unit,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="benchmarks/results/sharding-memory")
    args = parser.parse_args()
    rows = []
    for name, (config_name, architecture) in MODELS.items():
        config = load_config(config_name)
        if architecture:
            config.model.architecture = dict(architecture)
        report = parameter_report(config)
        unit = largest_unit(config)
        for gpus in GPUS:
            rows.append({"model": name, "gpus": gpus, "base_params": report.base, "trainable_params": report.trainable,
                         "largest_unit_params": unit,
                         "gib_per_gpu": {k: v / GIB for k, v in memory(report.base, report.trainable, unit,
                                                                          gpus).items()}})
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "formula": __doc__.split("\n\n")[1]}, indent=2) + "\n")
    modes = list(rows[0]["gib_per_gpu"])
    lines = ["| model | N_b (frozen) | N_t (LoRA + REM) | GPUs | " + " | ".join(f"{m} GiB/GPU" for m in modes) + " |",
             "|---|---|---|---|" + "---|" * len(modes)]
    for r in rows:
        lines.append(f"| {r['model']} | {r['base_params'] / 1e9:.2f}B | {r['trainable_params'] / 1e6:.1f}M | {r['gpus']} | "
                     + " | ".join(f"{r['gib_per_gpu'][m]:.2f}" for m in modes) + " |")
    table = "\n".join(lines)
    out.with_suffix(".md").write_text(table + "\n\nWeights, gradients and optimizer states only; activations "
                                      "excluded (benchmarks/sharding_memory.py).\n", encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
