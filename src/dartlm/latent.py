"""Continuous thoughts (Coconut, CODI): the last hidden state fed back as the next input embedding.

A latent pathway is laid out as three parts of one sequence:

    prefix  [bos] Q <bot>                     left-padded, so that every row's prefix ends in the same column
    K continuous thoughts                     one pass each, aligned across rows because the prefixes are
    suffix  <eot> [rest of the CoT] SEP Y eos right-padded (training) or the same ids for every row (inference)

Left-padding the prefix is what makes batching correct: each thought is one new column for every row, and the
attention mask (padding off) and position ids (counted from each row's first real token) carry over through the
KV cache. Training and decoding use the same `SequenceRunner`, with or without the cache.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from dartlm.data.layout import PROMPT, Pathway, pad_pathways
from dartlm.decoding import SequenceRunner, Step

BOT_TOKEN = "<bot>"  # begin of thoughts: the last token before the continuous thoughts
EOT_TOKEN = "<eot>"  # end of thoughts: the first token after them


def thought_projection(hidden: int) -> nn.Module:
    """CODI's projection of a hidden state into the next input embedding: Linear, GELU, Linear, LayerNorm."""
    return nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.LayerNorm(hidden))


def run_thoughts(runner: SequenceRunner, step: Step, count: int, projection: nn.Module | None = None,
                 on_thought: Callable[[Step], None] | None = None) -> Step:
    """Feed `count` continuous thoughts after `step` (which must carry hidden states); returns the last step.

    on_thought, when given, sees the step of each thought as it is fed (its states at the thought's position).
    """
    dtype = runner.embed.weight.dtype
    for _ in range(count):
        thought = step.last_hidden  # (B, n)
        if projection is not None:
            thought = projection(thought.to(next(projection.parameters()).dtype))
        step = runner.feed(thought[:, None].to(dtype), hidden_states=True)
        if on_thought is not None:
            on_thought(step)
    return step


def latent_batch(prefixes: Sequence[Sequence[int]], suffixes: Sequence[Pathway], pad_token_id: int,
                 device: torch.device | str = "cpu") -> dict[str, dict[str, torch.Tensor]]:
    """{"prefix": left-padded ids and mask, "suffix": right-padded ids, mask, roles, anchor} on `device`."""
    prefix = pad_pathways([Pathway(tuple(p), (PROMPT,) * len(p), len(p) - 1) for p in prefixes], pad_token_id,
                          left=True)
    suffix = pad_pathways(suffixes, pad_token_id)
    return {part: {k: v.to(device) for k, v in tensors.items()} for part, tensors in
            (("prefix", prefix), ("suffix", suffix))}


def run_latent_pathway(model, batch: dict[str, dict[str, torch.Tensor]], num_thoughts: int,
                       projection: nn.Module | None = None, *, use_cache: bool = True) -> Step:
    """Prefix, thoughts, suffix through the model (with gradients); returns the suffix's logits and hidden states."""
    runner = SequenceRunner(model, use_cache=use_cache)
    prefix, suffix = batch["prefix"], batch["suffix"]
    step = runner.feed_ids(prefix["input_ids"], prefix["attention_mask"], hidden_states=True)
    run_thoughts(runner, step, num_thoughts, projection)
    return runner.feed_ids(suffix["input_ids"], suffix["attention_mask"], hidden_states=True)
