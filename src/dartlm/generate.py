"""Answer questions with an exported model: the ST prompt, one prefill, greedy decoding of the answer."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dartlm.data.example import Example
from dartlm.data.layout import PROMPT, Pathway, PromptFormat, build_pathway, pad_pathways, segment_example
from dartlm.model.export import PromptSpec


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
        prompts.append(build_pathway(seg, thoughts, with_answer=False).input_ids)
    return prompts


@torch.no_grad()
def generate_answers(model, tokenizer, spec: PromptSpec, questions: Sequence[str], *, max_new_tokens: int = 32,
                     batch_size: int = 16) -> list[str]:
    """Greedy answers, batched with left padding (so every prompt ends where generation starts)."""
    answers: list[str] = []
    device = next(model.parameters()).device
    prompts = prompt_ids(questions, tokenizer, spec)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        pathways = [Pathway(ids, (PROMPT,) * len(ids), len(ids) - 1) for ids in chunk]
        batch = pad_pathways(pathways, tokenizer.pad_token_id, left=True)
        output = model.generate(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        answers.extend(text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return answers

