"""Merge LoRA and REM into the base weights and write a plain Hugging Face folder.

The folder loads with stock `AutoModelForCausalLM.from_pretrained`; `dartlm_prompt.json` beside the weights says
how to prompt it (the question, C thought tokens, the separator). Before writing, the merged model must reproduce
the adapter model's ST-pathway logits on a probe batch (compared in float64, relative to the logits' scale).
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


# The merge check runs both models in float64 and bounds the logit difference relative to the logits' scale.
# In fp32 the two computation orders (adapter model, merged weights) differ by rounding that grows with width, depth
# and the adapters' size: a correct merge of a trained SmolLM2-135M differed by 1.45e-4 in absolute logits, above
# the old fixed 1e-4. In float64 that rounding is about 1e-13 of the logits' scale for any model size, while a merge
# that drops or misplaces a trained adapter moves the logits by 1e-4 of their scale or (much) more.
CHECK_DTYPE = torch.float64
DEFAULT_TOLERANCE = 1e-8


def relative_difference(reference: torch.Tensor, logits: torch.Tensor, keep: torch.Tensor) -> float:
    """max |reference - logits| over the kept positions, over max |reference| there (NaN propagates)."""
    reference, logits = reference[keep], logits[keep]
    return ((reference - logits).abs().max() / reference.abs().max().clamp_min(1e-30)).item()


@torch.no_grad()
def merge_with_check(model: nn.Module, probe: dict[str, torch.Tensor], tolerance: float = DEFAULT_TOLERANCE,
                     check_dtype: torch.dtype = CHECK_DTYPE) -> tuple[nn.Module, float]:
    """Merge and compare logits on the probe batch (ST pathway: REM on); returns (merged model, difference).

    probe: input_ids and attention_mask (B, T). The model is cast to check_dtype (float64: twice the memory of
    fp32) for the comparison and merge, and the merged model is returned in that dtype. difference: the max
    |logit difference| relative to the max |logit| (see relative_difference). Raises MergeMismatchError if it
    exceeds tolerance.
    """
    model.eval().to(check_dtype)
    ids, mask = probe["input_ids"], probe["attention_mask"]
    reference = model(input_ids=ids, attention_mask=mask).logits
    merged = merge_adapters(model)
    merged.eval()
    logits = merged(input_ids=ids, attention_mask=mask).logits
    difference = relative_difference(reference, logits, mask.bool())  # padded positions carry no meaning
    if not difference <= tolerance:  # also catches NaN
        raise MergeMismatchError(
            f"merged model differs from the adapter model by {difference:.3g} of the logits' scale "
            f"(checked in {str(check_dtype).removeprefix('torch.')}, tolerance {tolerance:g}); nothing was written"
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
                 *, tolerance: float = DEFAULT_TOLERANCE, dtype: torch.dtype | None = torch.float32,
                 log=print) -> float:
    """Merge, check against the probe batch, and only then write (in dtype); returns the relative difference."""
    merged, difference = merge_with_check(model, probe, tolerance)
    log(f"merge check: max |logit difference| = {difference:.3g} of the logits' scale on "
        f"{tuple(probe['input_ids'].shape)} probe tokens (float64, tolerance {tolerance:g})")
    save_plain_model(merged, tokenizer, spec, out_dir, dtype)
    return difference
