"""Load a folder written by `dartlm export`: the stock transformers model, its tokenizer, its prompt spec, and the
modules of the method's own that its way of thinking needs (CODI's projection, Quiet-STaR's head)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dartlm.model.export import ExportError, PromptSpec
from dartlm.thinking import thinking_for


def load_exported(folder: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """(model, tokenizer, prompt spec) of a folder written by `dartlm export`; the model is a stock HF model."""
    spec = PromptSpec.load(Path(folder))
    thinking = thinking_for(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    except (OSError, ValueError, KeyError, TypeError) as err:  # config.json or weights missing or garbled
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise ExportError(f"{folder}: cannot load the exported model: {first}") from None
    hidden = model.get_input_embeddings().weight.shape[1]
    # Modules of the method's own (CODI's projection, Quiet-STaR's head) are not part of the architecture; they
    # travel beside it.
    for attribute, filename in thinking.needed_side_modules(spec).items():
        module = thinking.build_side_module(attribute, hidden, spec)
        setattr(model, attribute, _side_module(module, folder, filename, device, dtype))
    return model, tokenizer, spec


def _side_module(module, folder, filename: str, device, dtype):
    from safetensors.torch import load_file

    path = Path(folder) / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; the model's prompt spec needs it (was the folder copied whole?)")
    module.load_state_dict(load_file(str(path)))
    return module.to(device=device, dtype=dtype).eval()
