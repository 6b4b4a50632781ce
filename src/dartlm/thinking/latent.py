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

from dartlm.data.example import Example
from dartlm.data.layout import PROMPT, Pathway, PromptFormat, Segments, pad_pathways, segment_example
from dartlm.model.export import PROJECTION_FILE, PromptSpec
from dartlm.thinking.base import PromptNotExpressibleError, Thinking
from dartlm.thinking.decoding import Decoded, SequenceRunner, Step, greedy_continue

BOT_TOKEN = "<bot>"  # begin of thoughts: the last token before the continuous thoughts
EOT_TOKEN = "<eot>"  # end of thoughts: the first token after them
PROJECTION_ATTRIBUTE = "latent_projection"  # CODI's projection, on the model it belongs to


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


# --- inference: the way of thinking of an exported Coconut or CODI model -------------------------------------------


class LatentThinking(Thinking):
    """[bos] Q <bot>, C continuous thoughts (through `latent_projection.safetensors` when the spec says
    `projection`), <eot> + separator, then the answer."""

    name = "latent"
    token_prompted = False
    side_modules = {PROJECTION_ATTRIBUTE: PROJECTION_FILE}

    def needed_side_modules(self, spec: PromptSpec) -> dict[str, str]:
        return dict(self.side_modules) if spec.projection else {}

    def build_side_module(self, attribute: str, hidden: int, spec: PromptSpec) -> nn.Module:
        return thought_projection(hidden)

    def prompt(self, seg: Segments, tokenizer, spec: PromptSpec) -> tuple[int, ...]:
        return tuple(seg.prefix + seg.question) + (tokenizer.convert_tokens_to_ids(spec.latent_markers[0]),)

    def suffix_ids(self, tokenizer, spec: PromptSpec) -> tuple[int, ...]:
        """What follows the continuous thoughts: <eot> and the separator; then the model answers."""
        seg = segment_example(Example(question="", steps=(), answer=""), tokenizer,
                              PromptFormat(separator=spec.separator, joiner=spec.joiner))
        return (tokenizer.convert_tokens_to_ids(spec.latent_markers[1]),) + seg.separator

    @torch.no_grad()
    def decode(self, model, tokenizer, spec: PromptSpec, batch: dict[str, torch.Tensor], *, max_new_tokens: int,
               min_new_tokens: int = 0, use_cache: bool = True) -> Decoded:
        runner = SequenceRunner(model, use_cache=use_cache)
        step = runner.feed_ids(batch["input_ids"], batch["attention_mask"], hidden_states=True)
        run_thoughts(runner, step, spec.num_thought_tokens, getattr(model, PROJECTION_ATTRIBUTE, None))
        rows = batch["input_ids"].shape[0]
        suffix = torch.tensor([self.suffix_ids(tokenizer, spec)] * rows, device=batch["input_ids"].device)
        logits = runner.feed_ids(suffix).logits[:, -1]
        return greedy_continue(runner, logits, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id, min_new_tokens=min_new_tokens)

    def prompt_text(self, question: str, spec: PromptSpec) -> str:
        raise PromptNotExpressibleError(
            f"a {spec.method} model thinks in continuous thoughts (hidden states fed back as inputs), which no text "
            "prompt can express; evaluate it with `dartlm eval`")

    def layout(self, spec: PromptSpec, bos: str, separator: str) -> str:
        start, end = spec.latent_markers
        return (f"{bos}question + `{start}`, {spec.num_thought_tokens} continuous thoughts, `{end}` + {separator}, "
                "then the answer")

    def snippet(self, spec: PromptSpec, bos: str, separator: str) -> list[str]:
        start, end = spec.latent_markers
        lines = [f"ids = {bos}encode(question) + [tokenizer.convert_tokens_to_ids({start!r})]",
                 "embed = model.get_input_embeddings()"]
        if spec.projection:
            lines += [
                "from safetensors.torch import load_file",
                "n = model.config.hidden_size",
                "projection = torch.nn.Sequential(torch.nn.Linear(n, n), torch.nn.GELU(), torch.nn.Linear(n, n),",
                "                                 torch.nn.LayerNorm(n))",
                f"projection.load_state_dict(load_file({PROJECTION_FILE!r}))",
            ]
        feed = "projection(last)" if spec.projection else "last"
        return lines + [
            "with torch.no_grad():",
            "    inputs = embed(torch.tensor([ids]))",
            f"    for _ in range({spec.num_thought_tokens}):  # continuous thoughts: the last hidden state fed back",
            "        last = model(inputs_embeds=inputs, output_hidden_states=True).hidden_states[-1][:, -1:]",
            f"        inputs = torch.cat([inputs, {feed}.to(inputs.dtype)], dim=1)",
            f"    after = [tokenizer.convert_tokens_to_ids({end!r})] + encode({separator})",
            "    inputs = torch.cat([inputs, embed(torch.tensor([after]))], dim=1)",
            "    answer = []",
            f"    for _ in range({self.max_new_tokens}):  # greedy",
            "        token = model(inputs_embeds=inputs).logits[0, -1].argmax().item()",
            "        if token == tokenizer.eos_token_id:",
            "            break",
            "        answer.append(token)",
            "        inputs = torch.cat([inputs, embed(torch.tensor([[token]]))], dim=1)",
            "print(tokenizer.decode(answer, skip_special_tokens=True).strip())",
        ]

    def probe_states(self, runner, step, tokenizer, spec, width, separator_tokens, stack):
        """The state each continuous thought was computed at, then z_N after <eot> and the separator."""
        parts = []
        run_thoughts(runner, step, spec.num_thought_tokens, getattr(runner.model, PROJECTION_ATTRIBUTE, None),
                     on_thought=lambda s: parts.append(stack(s.hidden_states, [0])))
        suffix = torch.tensor([self.suffix_ids(tokenizer, spec)] * step.logits.shape[0])
        step = runner.feed_ids(suffix, hidden_states=True)
        parts.append(stack(step.hidden_states, [suffix.shape[1] - 1]))
        return torch.cat(parts, dim=2)
