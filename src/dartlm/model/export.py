"""Merge LoRA and REM into the base weights and write a plain Hugging Face folder.

The folder loads with stock `AutoModelForCausalLM.from_pretrained`; `dartlm_prompt.json` beside the weights says
how to prompt it (the question, C thought tokens, the separator). Before writing, the merged model must reproduce
the adapter model's ST-pathway logits on a probe batch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from dartlm.model.adapters import is_peft
from dartlm.model.rem import merge_rem, rem_wrappers

PROMPT_FILE = "dartlm_prompt.json"
PROJECTION_FILE = "latent_projection.safetensors"


class MergeMismatchError(RuntimeError):
    """The merged model does not reproduce the adapter model within tolerance; nothing was written."""


@dataclass(frozen=True)
class PromptSpec:
    """How an exported model expects to be prompted.

    decode "answer": ids([bos] + Q) + [thought_token] * C + ids(joiner + separator), then the answer.
    decode "cot": ids([bos] + Q), then the model writes the CoT, the separator and the answer.
    decode "latent": ids([bos] + Q) + <bot>, C continuous thoughts (through `latent_projection.safetensors` when
    `projection`), then ids(<eot>) + ids(joiner + separator), then the answer.
    """

    method: str
    num_thought_tokens: int
    thought_token: str | None
    separator: str
    joiner: str = " "
    decode: str = "answer"  # "answer": prompt ends with the separator; "cot": the model writes CoT first
    latent_markers: tuple[str, str] | None = None  # (<bot>, <eot>) for decode "latent"
    projection: bool = False  # continuous thoughts pass through the saved projection (CODI)
    format_version: int = 1

    def save(self, folder: Path) -> None:
        (folder / PROMPT_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> "PromptSpec":
        path = Path(folder) / PROMPT_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: no {PROMPT_FILE}; is this a folder written by `dartlm export`?")
        fields = json.loads(path.read_text(encoding="utf-8"))
        if fields.get("latent_markers"):
            fields["latent_markers"] = tuple(fields["latent_markers"])
        return cls(**fields)


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold LoRA (PEFT) and then REM into the weights; returns the plain transformers model. In place."""
    if is_peft(model):
        model = model.merge_and_unload()
    merge_rem(model)
    leftovers = [name for name, m in model.named_modules() if "lora" in type(m).__module__.lower()]
    if rem_wrappers(model) or leftovers:
        raise RuntimeError(f"adapter modules remain after merging: {leftovers[:5]}")
    return model


@torch.no_grad()
def merge_with_check(model: nn.Module, probe: dict[str, torch.Tensor], tolerance: float = 1e-4) -> tuple[nn.Module, float]:
    """Merge and compare logits on the probe batch (ST pathway: REM on); returns (merged model, max |diff|).

    probe: input_ids and attention_mask (B, T). Raises MergeMismatchError if the difference exceeds tolerance.
    """
    model.eval()
    reference = model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits.float()
    merged = merge_adapters(model)
    merged.eval()
    logits = merged(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits.float()
    keep = probe["attention_mask"].bool()  # padded positions carry no meaning
    difference = (reference - logits).abs()[keep].max().item()
    if not difference <= tolerance:  # also catches NaN
        raise MergeMismatchError(
            f"merged model differs from the adapter model by {difference:.3g} in logits (tolerance {tolerance:g}); "
            "nothing was written"
        )
    return merged, difference


def save_plain_model(model: nn.Module, tokenizer, spec: PromptSpec, out_dir: Path, dtype: torch.dtype | None = None) -> None:
    """Write weights (safetensors), config, tokenizer and the prompt spec."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    spec.save(out_dir)


def export_model(model: nn.Module, tokenizer, spec: PromptSpec, probe: dict[str, torch.Tensor], out_dir: Path,
                 *, tolerance: float = 1e-4, dtype: torch.dtype | None = None, log=print) -> float:
    """Merge, check against the probe batch, and only then write; returns the max logit difference."""
    merged, difference = merge_with_check(model, probe, tolerance)
    log(f"merge check: max |logit difference| = {difference:.3g} on {tuple(probe['input_ids'].shape)} probe tokens "
        f"(tolerance {tolerance:g})")
    save_plain_model(merged, tokenizer, spec, out_dir, dtype)
    return difference
