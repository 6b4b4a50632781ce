"""Greedy decoding for a batch of left-padded prompts, with or without a KV cache.

One small loop instead of `model.generate` so that every method (token prompts and continuous thoughts alike) is
decoded and timed by the same code, the number of forward passes is known exactly, and decode lengths can be
pinned (`min_new_tokens`) for cost benchmarks. `use_cache=False` recomputes the whole sequence at every pass: the
reference the cached path is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class Decoded:
    tokens: list[list[int]]  # per row, the generated ids up to and excluding eos
    forward_passes: int  # model calls: prompt chunks (prefill, thoughts, ...) + one per further token
    thought_tokens: list[int] = field(default_factory=list)  # per row, tokens thought and dropped (Quiet-STaR)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding gets 0). (B, T) -> (B, T)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class Step:
    """The model's outputs on the positions just fed: logits (B, k, V) and every layer's hidden states (B, k, n)."""

    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...]

    @property
    def last_hidden(self) -> torch.Tensor:
        """The final layer's (normed) hidden state at the last fed position, (B, n): a continuous thought."""
        return self.hidden_states[-1][:, -1]


class SequenceRunner:
    """Feeds a batch to a causal LM chunk by chunk, as token ids or as input embeddings.

    The attention mask grows with every chunk and position ids follow it, so left padding before the first chunk
    and right padding inside a chunk are both ignored. With `use_cache` each chunk reuses the KV cache of the
    previous ones; without it the whole sequence so far is run again (same numbers, slower).
    """

    def __init__(self, model, *, use_cache: bool = True):
        self.model = model
        self.use_cache = use_cache
        self.embed = model.get_input_embeddings()
        self.cache = None
        self.mask: torch.Tensor | None = None
        self.embeds: torch.Tensor | None = None  # everything fed so far (no-cache mode only)
        self.passes = 0

    @property
    def length(self) -> int:
        """Columns fed so far (padding included)."""
        return 0 if self.mask is None else self.mask.shape[1]

    def rewind(self, length: int) -> None:
        """Forget everything fed after the first `length` columns (a thought that has been used)."""
        drop = self.length - length
        if drop <= 0:
            return
        self.mask = self.mask[:, :length]
        if self.use_cache:
            self.cache.crop(-drop)
        else:
            self.embeds = self.embeds[:, :length]

    def feed_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 hidden_states: bool = False) -> Step:
        return self.feed(self.embed(input_ids), attention_mask, hidden_states=hidden_states)

    def feed(self, embeds: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
             hidden_states: bool = False) -> Step:
        """Run the next chunk: embeds (B, k, n), attention_mask (B, k) (default all ones).

        hidden_states: also return every layer's hidden states on the chunk (continuous thoughts, distillation).
        """
        batch, width = embeds.shape[:2]
        if attention_mask is None:
            attention_mask = torch.ones(batch, width, dtype=torch.long, device=embeds.device)
        self.mask = attention_mask if self.mask is None else torch.cat([self.mask, attention_mask.to(self.mask)], 1)
        positions = positions_from_mask(self.mask)
        if self.use_cache:
            out = self.model(inputs_embeds=embeds, attention_mask=self.mask, position_ids=positions[:, -width:],
                             past_key_values=self.cache, use_cache=True, output_hidden_states=hidden_states)
            self.cache = out.past_key_values
        else:
            self.embeds = embeds if self.embeds is None else torch.cat([self.embeds, embeds], dim=1)
            out = self.model(inputs_embeds=self.embeds, attention_mask=self.mask, position_ids=positions,
                             use_cache=False, output_hidden_states=hidden_states)
        self.passes += 1
        hidden = tuple(h[:, -width:] for h in out.hidden_states) if hidden_states else ()
        return Step(out.logits[:, -width:], hidden)


def greedy_continue(runner: SequenceRunner, logits: torch.Tensor, *, max_new_tokens: int, eos_token_id: int,
                    pad_token_id: int, min_new_tokens: int = 0,
                    next_logits: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Decoded:
    """Greedy tokens after whatever the runner has been fed; logits (B, V) predict the first one.

    eos cannot be chosen before `min_new_tokens` tokens: with min = max, every row decodes exactly that many.
    next_logits(token (B,)) -> (B, V) feeds a chosen token and predicts the next one (default: feed it and read
    the logits; Quiet-STaR thinks in between).
    """
    if next_logits is None:
        next_logits = lambda token: runner.feed_ids(token[:, None]).logits[:, -1]  # noqa: E731
    batch = logits.shape[0]
    finished = torch.zeros(batch, dtype=torch.bool, device=logits.device)
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
        logits = next_logits(token)
    return Decoded(_strip(torch.stack(generated, dim=1) if generated else None, batch, eos_token_id), runner.passes)


@torch.no_grad()
def greedy_decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
                  eos_token_id: int, pad_token_id: int, min_new_tokens: int = 0, use_cache: bool = True) -> Decoded:
    """Greedy continuation of left-padded prompts (B, T) until eos or max_new_tokens."""
    return greedy_decode_with(SequenceRunner(model, use_cache=use_cache), input_ids, attention_mask,
                              max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                              min_new_tokens=min_new_tokens)


def greedy_decode_with(runner, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
                       eos_token_id: int, pad_token_id: int, min_new_tokens: int = 0) -> Decoded:
    """greedy_decode through any runner with SequenceRunner's `feed_ids` (e.g. an inference engine's)."""
    logits = runner.feed_ids(input_ids, attention_mask.to(input_ids.device)).logits[:, -1]
    return greedy_continue(runner, logits, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                           pad_token_id=pad_token_id, min_new_tokens=min_new_tokens)


def _strip(tokens: torch.Tensor | None, batch: int, eos: int) -> list[list[int]]:
    """Rows cut at their first eos."""
    if tokens is None:
        return [[] for _ in range(batch)]
    rows = []
    for row in tokens.tolist():
        rows.append(row[: row.index(eos)] if eos in row else row)
    return rows
