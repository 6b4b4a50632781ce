"""Load or build the base model and its tokenizer from a ModelConfig."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedConfig

from dartlm.config import ConfigError, ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def architecture_config(model: ModelConfig) -> PreTrainedConfig:
    """The transformers config: from `architecture` when given, else read from name_or_path."""
    if model.architecture:
        fields = dict(model.architecture)
        model_type = fields.pop("model_type", None)
        if not model_type:
            raise ConfigError("model.architecture needs a model_type (e.g. llama, qwen2, gpt2)")
        try:
            return AutoConfig.for_model(model_type, **fields)
        except ValueError as err:
            raise ConfigError(f"model.architecture: {err}") from None
    return AutoConfig.from_pretrained(resolve_model_source(model.name_or_path))


def resolve_model_source(name: str) -> str:
    """A hub name or folder as is; an offline alias (smollm2-135m) -> its converted local folder."""
    from dartlm.model.offline import is_alias, resolve_model_alias

    return resolve_model_alias(name) if is_alias(name) else name


def load_base_model(model: ModelConfig, device: str | torch.device = "cpu"):
    """Pretrained weights from name_or_path, or a random-initialised model from `architecture`."""
    dtype = DTYPES[model.dtype]
    if model.name_or_path:
        source = resolve_model_source(model.name_or_path)
        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype).to(device)
    return AutoModelForCausalLM.from_config(architecture_config(model), dtype=dtype).to(device)


def build_meta_model(model: ModelConfig):
    """The architecture on the meta device: shapes and parameter counts without memory or weights."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(architecture_config(model))


ASSETS = Path(__file__).resolve().parent.parent / "assets"


def resolve_asset(name: str) -> str:
    """`dartlm:NAME` is a folder packaged under dartlm/assets; anything else is returned as is."""
    if name.startswith("dartlm:"):
        path = ASSETS / name.removeprefix("dartlm:")
        if not path.exists():
            raise ConfigError(f"no packaged asset {name!r}; available: {', '.join(sorted(p.name for p in ASSETS.iterdir()))}")
        return str(path)
    return name


def load_tokenizer(model: ModelConfig):
    source = model.tokenizer or model.name_or_path
    if not source:
        raise ConfigError("model.tokenizer: a random-initialised model needs a tokenizer (a folder or dartlm:tiny-tokenizer)")
    return AutoTokenizer.from_pretrained(resolve_model_source(resolve_asset(source)))
