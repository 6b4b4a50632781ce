"""Answer questions with an exported model, each method decoding its own way, greedily and batched."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dartlm.data.example import Example
from dartlm.data.layout import PROMPT, Pathway, PromptFormat, build_pathway, pad_pathways, segment_example
from dartlm.model.export import PromptSpec


@dataclass(frozen=True)
class Generation:
    text: str  # everything the model wrote
    answer: str  # the text after the separator (decode "cot"), or all of it (decode "answer")
    cot: str = ""  # the chain of thought, for decode "cot"


def load_exported(folder: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """(model, tokenizer, prompt spec) of a folder written by `dartlm export`; the model is a stock HF model."""
    spec = PromptSpec.load(Path(folder))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    return model, tokenizer, spec


def prompt_ids(questions: Sequence[str], tokenizer, spec: PromptSpec) -> list[tuple[int, ...]]:
    """Token ids of the inference prompt, built segment by segment exactly as in training."""
    fmt = PromptFormat(separator=spec.separator, joiner=spec.joiner)
    thoughts = []
    if spec.num_thought_tokens:
        thoughts = [tokenizer.convert_tokens_to_ids(spec.thought_token)] * spec.num_thought_tokens
    prompts = []
    for question in questions:
        seg = segment_example(Example(question=question, steps=(), answer=""), tokenizer, fmt)
        if spec.decode == "cot":
            prompts.append(seg.prefix + seg.question)
        else:
            prompts.append(build_pathway(seg, thoughts, with_answer=False).input_ids)
    return prompts


def left_padded(prompts: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad prompts so that every row ends where generation starts."""
    return pad_pathways([Pathway(tuple(ids), (PROMPT,) * len(ids), len(ids) - 1) for ids in prompts], pad_id, left=True)


def split_generation(text: str, spec: PromptSpec) -> Generation:
    if spec.decode != "cot":
        return Generation(text.strip(), text.strip())
    cot, sep, answer = text.partition(spec.separator)
    return Generation(text.strip(), answer.strip() if sep else "", cot.strip())


@torch.no_grad()
def generate(model, tokenizer, spec: PromptSpec, questions: Sequence[str], *, max_new_tokens: int | None = None,
             batch_size: int = 16) -> list[Generation]:
    """Greedy generations, batched with left padding. max_new_tokens defaults to 32 (answer) or 256 (CoT)."""
    if max_new_tokens is None:
        max_new_tokens = 256 if spec.decode == "cot" else 32
    device = next(model.parameters()).device
    prompts = prompt_ids(questions, tokenizer, spec)
    results: list[Generation] = []
    for start in range(0, len(prompts), batch_size):
        batch = left_padded(prompts[start : start + batch_size], tokenizer.pad_token_id)
        output = model.generate(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        results.extend(split_generation(text, spec) for text in texts)
    return results


def generate_answers(model, tokenizer, spec: PromptSpec, questions: Sequence[str], **kwargs) -> list[str]:
    """Just the answers."""
    return [g.answer for g in generate(model, tokenizer, spec, questions, **kwargs)]
