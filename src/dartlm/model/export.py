"""Merge LoRA and REM into the base weights and write a plain Hugging Face folder.

The folder loads with stock `AutoModelForCausalLM.from_pretrained`; `dartlm_prompt.json` beside the weights says
how to prompt it (the question, C thought tokens, the separator). Before writing, the merged model must reproduce
the adapter model's ST-pathway logits on a probe batch (compared in float64, relative to the logits' scale, within
what fp32 rounding alone changes them by).
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
# Every file of the export with its sha256, written last when the export is made: the export's identity (results
# name it) and its completion marker. The model card (README.md) is left out: it is rewritten once the model is
# evaluated.
MANIFEST_FILE = "dartlm_export.json"
CARD_FILE = "README.md"
PROJECTION_FILE = "latent_projection.safetensors"
QUIET_HEAD_FILE = "quiet_head.safetensors"


class MergeMismatchError(RuntimeError):
    """The merged model does not reproduce the adapter model within tolerance; nothing was written."""


class ExportError(ValueError):
    """An exported folder is incomplete, tampered with, or not an export; the message names the file."""


@dataclass(frozen=True)
class PromptSpec:
    """How an exported model expects to be prompted.

    decode "answer": ids([bos] + Q) + [thought_token] * C + ids(joiner + separator), then the answer.
    decode "cot": ids([bos] + Q), then the model writes the CoT, the separator and the answer.
    decode "latent": ids([bos] + Q) + <bot>, C continuous thoughts (through `latent_projection.safetensors` when
    `projection`), then ids(<eot>) + ids(joiner + separator), then the answer.
    decode "quiet": the "answer" prompt without thought tokens; a thought of quiet_n_ahead tokens before each
    answer token, mixed in by the head saved in `quiet_head.safetensors` (Quiet-STaR).
    """

    method: str
    num_thought_tokens: int
    thought_token: str | None
    separator: str
    joiner: str = " "
    decode: str = "answer"  # "answer": prompt ends with the separator; "cot": the model writes CoT first
    latent_markers: tuple[str, str] | None = None  # (<bot>, <eot>) for decode "latent"
    projection: bool = False  # continuous thoughts pass through the saved projection (CODI)
    quiet_n_ahead: int = 0  # decode "quiet": thought length before each token, start and end included
    format_version: int = 1

    def save(self, folder: Path) -> None:
        from dartlm.storage import write_json

        write_json(folder / PROMPT_FILE, asdict(self))

    @classmethod
    def load(cls, folder: Path) -> "PromptSpec":
        path = Path(folder) / PROMPT_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: no {PROMPT_FILE}; is this a folder written by `dartlm export`?")
        try:
            fields = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise ExportError(f"{path}: not a valid prompt file: {str(err).splitlines()[0][:200]}") from None
        return cls.from_fields(fields, str(path))

    @classmethod
    def from_fields(cls, fields, where: str) -> "PromptSpec":
        """A spec from its JSON fields, each checked: a tampered file is one error naming the field."""
        if not isinstance(fields, dict):
            raise ExportError(f"{where}: expected a JSON object, got {type(fields).__name__}")
        kinds = {"method": str, "num_thought_tokens": int, "thought_token": (str, type(None)), "separator": str,
                 "joiner": str, "decode": str, "latent_markers": (list, type(None)), "projection": bool,
                 "quiet_n_ahead": int, "format_version": int}
        unknown = sorted(set(fields) - set(kinds))
        missing = sorted({"method", "num_thought_tokens", "thought_token", "separator"} - set(fields))
        if unknown or missing:
            raise ExportError(f"{where}: " + "; ".join(
                part for part in (unknown and f"unknown field(s) {', '.join(map(repr, unknown))}",
                                  missing and f"missing field(s) {', '.join(missing)}") if part))
        for name, value in fields.items():
            kind = kinds[name]
            wrong_bool = isinstance(value, bool) and kind is int
            if wrong_bool or not isinstance(value, kind):
                raise ExportError(f"{where}: {name}: unexpected value {value!r}")
        if fields["num_thought_tokens"] < 0 or fields.get("quiet_n_ahead", 0) < 0:
            raise ExportError(f"{where}: num_thought_tokens and quiet_n_ahead must be >= 0")
        markers = fields.get("latent_markers")
        if markers is not None:
            if len(markers) != 2 or not all(isinstance(m, str) for m in markers):
                raise ExportError(f"{where}: latent_markers: expected two strings, got {markers!r}")
            fields = {**fields, "latent_markers": tuple(markers)}
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


# The merge check compares the adapter model and the merged model in float64, relative to the logits' scale, and
# bounds the difference by what fp32 rounding alone does to this model's logits on the same probe. A fixed bound
# does not scale: in fp32 the two computation orders differ by rounding that grows with width, depth and the
# adapters' size (a correct merge of SmolLM2-135M differed by 1.45e-4 in absolute logits, above a fixed 1e-4).
# Float64 alone is not exact either, because models keep some operations in fp32 whatever their dtype (Llama's
# RMSNorm and rotary embeddings): a correct merge then differs by a few fp32 ulps. A merge error smaller than the
# model's own fp32 rounding cannot matter to a model that is saved in fp32 or bf16; a wrong merge (an adapter
# dropped, or folded in with a 0.1% error in its scale) is orders of magnitude above it.
CHECK_DTYPE = torch.float64
DEFAULT_TOLERANCE = 1.0  # a multiple of the fp32 rounding of the model's logits
MIN_BOUND = 1e-12  # relative; for a model that fp32 happens to compute exactly on the probe


def relative_difference(reference: torch.Tensor, logits: torch.Tensor, keep: torch.Tensor) -> float:
    """max |reference - logits| over the kept positions, over max |reference| there (NaN propagates)."""
    reference, logits = reference[keep].double(), logits[keep].double()
    return ((reference - logits).abs().max() / reference.abs().max().clamp_min(1e-30)).item()


@dataclass(frozen=True)
class MergeCheck:
    difference: float  # merged vs adapter model, float64, relative to max |logit|
    fp32_rounding: float  # the adapter model in fp32 vs in float64, the same measure
    tolerance: float  # a multiple of fp32_rounding

    @property
    def bound(self) -> float:
        return max(self.tolerance * self.fp32_rounding, MIN_BOUND)

    @property
    def passed(self) -> bool:
        return self.difference <= self.bound  # False for NaN


@torch.no_grad()
def merge_with_check(model: nn.Module, probe: dict[str, torch.Tensor], tolerance: float = DEFAULT_TOLERANCE,
                     check_dtype: torch.dtype = CHECK_DTYPE) -> tuple[nn.Module, MergeCheck]:
    """Merge and compare logits on the probe batch (ST pathway: REM on); returns (merged model, the check).

    probe: input_ids and attention_mask (B, T). The model runs once in fp32, then is cast to check_dtype (float64:
    twice the memory of fp32) for the comparison and the merge; the merged model is returned in that dtype.
    Raises MergeMismatchError when the merged model's logits differ from the adapter model's by more than
    `tolerance` times what fp32 rounding alone changes them by.
    """
    model.eval()
    ids, mask = probe["input_ids"], probe["attention_mask"]
    keep = mask.bool()  # padded positions carry no meaning
    in_fp32 = model.to(torch.float32)(input_ids=ids, attention_mask=mask).logits
    model.to(check_dtype)
    reference = model(input_ids=ids, attention_mask=mask).logits
    merged = merge_adapters(model)
    merged.eval()
    logits = merged(input_ids=ids, attention_mask=mask).logits
    check = MergeCheck(relative_difference(reference, logits, keep), relative_difference(reference, in_fp32, keep),
                       tolerance)
    if not check.passed:
        raise MergeMismatchError(
            f"merged model differs from the adapter model by {check.difference:.3g} of the logits' scale, above "
            f"{tolerance:g} x the {check.fp32_rounding:.3g} that fp32 rounding alone changes them by (compared in "
            f"{str(check_dtype).removeprefix('torch.')}); nothing was written"
        )
    return merged, check


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
    """Merge, check against the probe batch, and only then write (in dtype); returns the check."""
    merged, check = merge_with_check(model, probe, tolerance)
    log(f"merge check: max |logit difference| = {check.difference:.3g} of the logits' scale on "
        f"{tuple(probe['input_ids'].shape)} probe tokens, against {check.fp32_rounding:.3g} from fp32 rounding "
        f"(float64, tolerance {tolerance:g}x)")
    save_plain_model(merged, tokenizer, spec, out_dir, dtype)
    return check


def export_files(folder: Path) -> dict[str, str]:
    """sha256 of every file of an export that its behaviour depends on (the model card and manifest aside)."""
    from dartlm.storage import file_hashes

    return file_hashes(Path(folder), exclude=(MANIFEST_FILE, CARD_FILE))


def write_manifest(folder: Path, **info) -> dict:
    """Record every file's sha256 in the export (written last: a folder with it is a finished export)."""
    from dartlm.storage import digest, write_json

    files = export_files(folder)
    manifest = {"format": 1, "fingerprint": digest(files), "files": files, **info}
    write_json(Path(folder) / MANIFEST_FILE, manifest)
    return manifest


def model_fingerprint(folder: Path) -> str:
    """The identity of a model folder: a digest of every file's sha256, computed from the files now.

    For a dartlm export, the files must still be the ones its manifest lists; a folder changed since its export
    (a file edited, added, removed, or left half-written) is refused, naming the files.
    """
    from dartlm.storage import digest

    folder = Path(folder)
    files = export_files(folder)
    manifest_path = folder / MANIFEST_FILE
    if manifest_path.is_file():
        try:
            listed = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
            assert isinstance(listed, dict)
        except (ValueError, KeyError, TypeError, AssertionError, UnicodeDecodeError):
            raise ExportError(f"{manifest_path}: unreadable export manifest") from None
        changed = sorted(name for name in set(files) | set(listed) if files.get(name) != listed.get(name))
        if changed:
            raise ExportError(f"{folder}: files changed since the export was written: {', '.join(changed[:5])}"
                              f"{' ...' if len(changed) > 5 else ''}; export it again")
    return digest(files)
