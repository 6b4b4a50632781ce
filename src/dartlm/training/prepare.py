"""Turn a base model into the trainable model of a method: special token, pad token, LoRA, REM."""

from __future__ import annotations

from torch import nn

from dartlm.config import Config
from dartlm.methods.base import Method
from dartlm.model.adapters import LoraSettings, add_special_token, attach_adapters, ensure_pad_token
from dartlm.model.rem import RemSettings


def lora_settings(config: Config) -> LoraSettings | None:
    section = config.lora
    if not section.enabled:
        return None
    return LoraSettings(section.rank, section.alpha, section.dropout, tuple(section.target_modules))


def rem_settings(config: Config, method: Method) -> RemSettings | None:
    if not (method.uses_rem and config.rem.enabled):
        return None
    return RemSettings(config.rem.rank, config.rem.alpha, config.rem.placement)


def prepare_model(base: nn.Module, tokenizer, config: Config, method: Method) -> tuple[nn.Module, int | None]:
    """(trainable model, id of the method's thought token or None).

    With LoRA disabled every base weight trains (full fine-tuning, for small from-scratch models); REM is added
    either way when the method uses it.
    """
    ensure_pad_token(tokenizer)
    ids = {token: add_special_token(base, tokenizer, token) for token in method.special_tokens}
    thought_id = ids.get(method.thought_token)
    lora = lora_settings(config)
    model = attach_adapters(base, lora, rem_settings(config, method))
    if lora is None:
        for param in model.parameters():
            param.requires_grad_(True)
    method.extend_model(model, tokenizer)
    return model, thought_id
