"""Greedy decoding with a KV cache, for a batch of left-padded prompts.

One small loop instead of `model.generate` so that every method is decoded and timed by the same code, the number
of forward passes is known exactly, and decode lengths can be pinned (`min_new_tokens`) for cost benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Decoded:
    tokens: list[list[int]]  # per row, the generated ids up to and excluding eos
    forward_passes: int  # model calls: one prefill + one per further token


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding gets 0). (B, T) -> (B, T)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def greedy_decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
                  eos_token_id: int, pad_token_id: int, min_new_tokens: int = 0) -> Decoded:
    """Greedy continuation of left-padded prompts (B, T) until eos or max_new_tokens.

    eos cannot be chosen before `min_new_tokens` tokens: with min = max, every row decodes exactly that many.
    """
    batch = input_ids.shape[0]
    device = input_ids.device
    mask = attention_mask.to(device)
    positions = positions_from_mask(mask)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
    passes = 1
    cache = out.past_key_values
    logits = out.logits[:, -1]  # (B, V)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    generated: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        if step < min_new_tokens:
            logits = logits.clone()
            logits[:, eos_token_id] = float("-inf")
        token = logits.argmax(dim=-1)  # (B,)
        token = torch.where(finished, torch.full_like(token, pad_token_id), token)
        generated.append(token)
        finished |= token == eos_token_id
        if finished.all() or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones(batch, 1, dtype=mask.dtype, device=device)], dim=1)
        positions = positions[:, -1:] + 1
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=positions, past_key_values=cache,
                    use_cache=True)
        passes += 1
        cache = out.past_key_values
        logits = out.logits[:, -1]
    return Decoded(_strip(torch.stack(generated, dim=1) if generated else None, batch, eos_token_id), passes)


def _strip(tokens: torch.Tensor | None, batch: int, eos: int) -> list[list[int]]:
    """Rows cut at their first eos."""
    if tokens is None:
        return [[] for _ in range(batch)]
    rows = []
    for row in tokens.tolist():
        rows.append(row[: row.index(eos)] if eos in row else row)
    return rows
