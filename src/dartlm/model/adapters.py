"""Attach DART's trainable parts to a base model: the `<st>` token, LoRA (PEFT) and REM."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from dartlm.model.rem import FusedLayout, RemSettings, find_attention_sites, inject_rem

ST_TOKEN = "<st>"
PAUSE_TOKEN = "<pause>"

# LoRA targets per attention layout: the attention's own projections only. A bare "c_proj" (GPT-2) or "dense"
# (GPT-NeoX) would also match an MLP projection.
LLAMA_STYLE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
FUSED_TARGETS = {
    "gpt2": ("attn.c_attn", "attn.c_proj"),
    "phi3": ("self_attn.qkv_proj", "self_attn.o_proj"),
    "gpt-neox": ("attention.query_key_value", "attention.dense"),
}


@dataclass(frozen=True)
class LoraSettings:
    """LoRA on the attention projections; the paper uses r = 128, alpha = 32, shared by both pathways."""

    rank: int = 128
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = field(default=())  # empty: the architecture's attention projections


def attention_layout(model: nn.Module) -> "str | FusedLayout":
    """"separate" (k_proj/v_proj) or the model's FusedLayout; raises UnsupportedArchitectureError otherwise."""
    layouts = {layout for _, _, layout in find_attention_sites(model)}
    if len(layouts) != 1:
        raise ValueError(f"mixed attention layouts in one model: {sorted(map(str, layouts))}")
    return layouts.pop()


def lora_config(model: nn.Module, settings: LoraSettings) -> LoraConfig:
    layout = attention_layout(model)
    fused = isinstance(layout, FusedLayout)
    targets = settings.target_modules or (FUSED_TARGETS[layout.kind] if fused else LLAMA_STYLE_TARGETS)
    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(targets),
        fan_in_fan_out=fused and layout.conv1d,  # GPT-2's Conv1D stores weights as (in, out)
        bias="none",
        task_type="CAUSAL_LM",
    )


def ensure_pad_token(tokenizer) -> None:
    """Many causal-LM tokenizers have no pad token; padding with eos is safe because losses use explicit roles."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token


def add_special_token(model: nn.Module, tokenizer, token: str) -> int:
    """Make sure `token` is in the tokenizer and has an embedding row; returns its id.

    A new row is the mean of the existing rows (deterministic, and in the span of real embeddings). The matrix
    grows only when the id does not fit: some models (Qwen2.5) have spare padded rows already. A tokenizer that
    already knows the token (reloaded from a run folder) still gets the row added to a fresh base model.
    """
    if token not in tokenizer.get_vocab():
        tokenizer.add_tokens([token], special_tokens=True)
    token_id = tokenizer.convert_tokens_to_ids(token)
    old_rows = model.get_input_embeddings().weight.shape[0]
    if token_id < old_rows:
        return token_id
    model.resize_token_embeddings(token_id + 1, mean_resizing=False)
    if model.get_input_embeddings().weight.device.type == "meta":
        return token_id
    with torch.no_grad():
        embeddings = model.get_input_embeddings().weight
        _set_row_to_mean(embeddings, token_id, old_rows)
        head = model.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != embeddings.data_ptr():
            _set_row_to_mean(head.weight, token_id, old_rows)
    return token_id


def _set_row_to_mean(weight: torch.Tensor, row: int, old_rows: int) -> None:
    weight[old_rows : row + 1] = weight[:old_rows].float().mean(dim=0).to(weight.dtype)


def attach_adapters(model: nn.Module, lora: LoraSettings | None, rem: RemSettings | None) -> nn.Module:
    """Freeze the base model, add LoRA (if given) and then REM (if given) on top of it.

    REM goes in after LoRA so that its transformed input reaches both the base weight and the LoRA branch of
    the key/value projections. Returns the PeftModel (or the model itself without LoRA).
    """
    for param in model.parameters():
        param.requires_grad_(False)
    if lora is not None:
        model = get_peft_model(model, lora_config(model, lora))
    if rem is not None:
        inject_rem(model, rem)
    return model


def is_peft(model: nn.Module) -> bool:
    return isinstance(model, PeftModel)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable parameters by kind (LoRA, REM, other) and the frozen rest."""
    counts = {"lora": 0, "rem": 0, "other_trainable": 0, "frozen": 0}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            counts["frozen"] += param.numel()
        elif "lora_" in name:
            counts["lora"] += param.numel()
        elif ".rem" in name:
            counts["rem"] += param.numel()
        else:
            counts["other_trainable"] += param.numel()
    return counts
