"""Answer questions with an exported model, each model thinking its own way (dartlm.thinking), greedily and batched."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from dartlm.data.example import Example
from dartlm.data.layout import PROMPT, Pathway, PromptFormat, pad_pathways, segment_example
from dartlm.model.export import PromptSpec
from dartlm.thinking import QuietThinking, thinking_for
from dartlm.thinking.decoding import greedy_decode_with
from dartlm.thinking.exported import load_exported  # noqa: F401  (the entry point for answering, re-exported)


@dataclass(frozen=True)
class Generation:
    text: str  # everything the model wrote (special tokens removed)
    answer: str  # the text after the separator (a model that writes its reasoning), or all of it
    cot: str = ""  # the reasoning, for a model that writes it
    num_tokens: int = 0  # tokens generated, eos excluded
    thought_tokens: int = 0  # tokens thought and dropped on the way (Quiet-STaR)


def without_thoughts(spec: PromptSpec) -> PromptSpec:
    """A Quiet-STaR model's spec, answering from the thought-free state alone (the mixing weight at 0): what its
    answers are worth without thinking, an ablation at inference."""
    thinking = thinking_for(spec)
    if not isinstance(thinking, QuietThinking):
        raise ValueError(f"answering without thoughts applies to models that think before each token (Quiet-STaR, "
                         f"Fast Quiet-STaR); this is a {spec.method} model")
    return thinking.without_thoughts(spec)


def prompt_ids(questions: Sequence[str], tokenizer, spec: PromptSpec) -> list[tuple[int, ...]]:
    """Token ids of the inference prompt, built segment by segment exactly as in training."""
    fmt = PromptFormat(separator=spec.separator, joiner=spec.joiner)
    thinking = thinking_for(spec)
    return [thinking.prompt(segment_example(Example(question=question, steps=(), answer=""), tokenizer, fmt),
                            tokenizer, spec) for question in questions]


def left_padded(prompts: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad prompts so that every row ends where generation starts."""
    return pad_pathways([Pathway(tuple(ids), (PROMPT,) * len(ids), len(ids) - 1) for ids in prompts], pad_id, left=True)


def split_generation(text: str, spec: PromptSpec, num_tokens: int = 0, thought_tokens: int = 0) -> Generation:
    answer, cot = thinking_for(spec).split(text, spec)
    return Generation(text.strip(), answer, cot, num_tokens, thought_tokens)


def default_max_new_tokens(spec: PromptSpec) -> int:
    return thinking_for(spec).max_new_tokens


def decode_prompts(model, tokenizer, spec: PromptSpec, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                   min_new_tokens: int = 0, use_cache: bool = True) -> tuple[list[Generation], int]:
    """One batch of prompt ids -> (generations, forward passes). model: a transformers model, or an engine's
    (engines/onnx.py: OnnxCausalLM, token-prompted decoding only)."""
    device = getattr(model, "device", None) or next(model.parameters()).device
    batch = {k: v.to(device) for k, v in left_padded(prompts, tokenizer.pad_token_id).items()}
    if hasattr(model, "runner"):  # an inference engine: dartlm's greedy loop, the engine computing each step
        decoded = greedy_decode_with(model.runner(), batch["input_ids"], batch["attention_mask"],
                                     max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    else:
        decoded = thinking_for(spec).decode(model, tokenizer, spec, batch, max_new_tokens=max_new_tokens,
                                            min_new_tokens=min_new_tokens, use_cache=use_cache)
    texts = tokenizer.batch_decode(decoded.tokens, skip_special_tokens=True)
    thoughts = decoded.thought_tokens or [0] * len(texts)
    return ([split_generation(t, spec, len(ids), n) for t, ids, n in zip(texts, decoded.tokens, thoughts)],
            decoded.forward_passes)


def generate(model, tokenizer, spec: PromptSpec, questions: Sequence[str], *, max_new_tokens: int | None = None,
             batch_size: int = 16) -> list[Generation]:
    """Greedy generations, batched with left padding and a KV cache."""
    max_new_tokens = max_new_tokens or default_max_new_tokens(spec)
    prompts = prompt_ids(questions, tokenizer, spec)
    results: list[Generation] = []
    for start in range(0, len(prompts), batch_size):
        generations, _ = decode_prompts(model, tokenizer, spec, prompts[start : start + batch_size],
                                        max_new_tokens=max_new_tokens)
        results.extend(generations)
    return results


def generate_answers(model, tokenizer, spec: PromptSpec, questions: Sequence[str], **kwargs) -> list[str]:
    """Just the answers."""
    return [g.answer for g in generate(model, tokenizer, spec, questions, **kwargs)]
