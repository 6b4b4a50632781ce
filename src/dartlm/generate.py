"""Answer questions with an exported model, each method decoding its own way, greedily and batched."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dartlm.data.example import Example
from dartlm.data.layout import PROMPT, Pathway, PromptFormat, build_pathway, pad_pathways, segment_example
from dartlm.decoding import SequenceRunner, greedy_continue, greedy_decode
from dartlm.latent import run_thoughts, thought_projection
from dartlm.model.export import ExportError, PROJECTION_FILE, QUIET_HEAD_FILE, PromptSpec
from dartlm.quiet import QuietHead, quiet_decode


@dataclass(frozen=True)
class Generation:
    text: str  # everything the model wrote (special tokens removed)
    answer: str  # the text after the separator (decode "cot"), or all of it (decode "answer")
    cot: str = ""  # the chain of thought, for decode "cot"
    num_tokens: int = 0  # tokens generated, eos excluded
    thought_tokens: int = 0  # tokens thought and dropped on the way (Quiet-STaR)


def load_exported(folder: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """(model, tokenizer, prompt spec) of a folder written by `dartlm export`; the model is a stock HF model."""
    spec = PromptSpec.load(Path(folder))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    except (OSError, ValueError, KeyError, TypeError) as err:  # config.json or weights missing or garbled
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise ExportError(f"{folder}: cannot load the exported model: {first}") from None
    hidden = model.get_input_embeddings().weight.shape[1]
    # CODI's thought projection and Quiet-STaR's head are not part of the architecture; they travel beside it.
    if spec.projection:
        model.latent_projection = _side_module(thought_projection(hidden), folder, PROJECTION_FILE, device, dtype)
    if spec.decode == "quiet":
        model.quiet_head = _side_module(QuietHead(hidden), folder, QUIET_HEAD_FILE, device, dtype)
    return model, tokenizer, spec


def _side_module(module, folder, filename: str, device, dtype):
    from safetensors.torch import load_file

    path = Path(folder) / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; the model's prompt spec needs it (was the folder copied whole?)")
    module.load_state_dict(load_file(str(path)))
    return module.to(device=device, dtype=dtype).eval()


def without_thoughts(spec: PromptSpec) -> PromptSpec:
    """A Quiet-STaR model's spec, answering from the thought-free state alone (the mixing weight at 0): what its
    answers are worth without thinking, an ablation at inference."""
    if spec.decode != "quiet":
        raise ValueError(f"answering without thoughts applies to models that think before each token (Quiet-STaR, "
                         f"Fast Quiet-STaR); this is a {spec.method} model")
    return replace(spec, decode="answer", num_thought_tokens=0, quiet_n_ahead=0)


def prompt_ids(questions: Sequence[str], tokenizer, spec: PromptSpec) -> list[tuple[int, ...]]:
    """Token ids of the inference prompt, built segment by segment exactly as in training."""
    fmt = PromptFormat(separator=spec.separator, joiner=spec.joiner)
    thoughts = []
    if spec.num_thought_tokens and spec.decode == "answer":
        thoughts = [tokenizer.convert_tokens_to_ids(spec.thought_token)] * spec.num_thought_tokens
    prompts = []
    for question in questions:
        seg = segment_example(Example(question=question, steps=(), answer=""), tokenizer, fmt)
        if spec.decode == "cot":
            prompts.append(seg.prefix + seg.question)
        elif spec.decode == "latent":
            prompts.append(seg.prefix + seg.question + (tokenizer.convert_tokens_to_ids(spec.latent_markers[0]),))
        else:
            prompts.append(build_pathway(seg, thoughts, with_answer=False).input_ids)
    return prompts


def left_padded(prompts: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad prompts so that every row ends where generation starts."""
    return pad_pathways([Pathway(tuple(ids), (PROMPT,) * len(ids), len(ids) - 1) for ids in prompts], pad_id, left=True)


def split_generation(text: str, spec: PromptSpec, num_tokens: int = 0, thought_tokens: int = 0) -> Generation:
    if spec.decode != "cot":
        return Generation(text.strip(), text.strip(), "", num_tokens, thought_tokens)
    cot, sep, answer = text.partition(spec.separator)
    return Generation(text.strip(), answer.strip() if sep else "", cot.strip(), num_tokens, thought_tokens)


def latent_suffix_ids(tokenizer, spec: PromptSpec) -> tuple[int, ...]:
    """What follows the continuous thoughts at inference: <eot> and the separator; then the model answers."""
    fmt = PromptFormat(separator=spec.separator, joiner=spec.joiner)
    seg = segment_example(Example(question="", steps=(), answer=""), tokenizer, fmt)
    return (tokenizer.convert_tokens_to_ids(spec.latent_markers[1]),) + seg.separator


@torch.no_grad()
def latent_decode(model, tokenizer, spec: PromptSpec, batch: dict[str, torch.Tensor], *, max_new_tokens: int,
                  min_new_tokens: int = 0, use_cache: bool = True):
    """Prefix, spec.num_thought_tokens continuous thoughts, <eot> SEP, then greedy answer tokens."""
    runner = SequenceRunner(model, use_cache=use_cache)
    step = runner.feed_ids(batch["input_ids"], batch["attention_mask"], hidden_states=True)
    run_thoughts(runner, step, spec.num_thought_tokens, getattr(model, "latent_projection", None))
    rows = batch["input_ids"].shape[0]
    suffix = torch.tensor([latent_suffix_ids(tokenizer, spec)] * rows, device=batch["input_ids"].device)
    logits = runner.feed_ids(suffix).logits[:, -1]
    return greedy_continue(runner, logits, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                           pad_token_id=tokenizer.pad_token_id, min_new_tokens=min_new_tokens)


def default_max_new_tokens(spec: PromptSpec) -> int:
    return 256 if spec.decode == "cot" else 32


def decode_prompts(model, tokenizer, spec: PromptSpec, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                   min_new_tokens: int = 0, use_cache: bool = True) -> tuple[list[Generation], int]:
    """One batch of prompt ids -> (generations, forward passes). model: a transformers model, or an engine's
    (engines/onnx.py: OnnxCausalLM, token-prompted decoding only)."""
    device = getattr(model, "device", None) or next(model.parameters()).device
    batch = {k: v.to(device) for k, v in left_padded(prompts, tokenizer.pad_token_id).items()}
    if hasattr(model, "runner"):  # an inference engine: dartlm's greedy loop, the engine computing each step
        from dartlm.engines.onnx import onnx_greedy_decode

        decoded = onnx_greedy_decode(model, batch["input_ids"], batch["attention_mask"], max_new_tokens=max_new_tokens,
                                     min_new_tokens=min_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                     pad_token_id=tokenizer.pad_token_id)
    elif spec.decode == "latent":
        decoded = latent_decode(model, tokenizer, spec, batch, max_new_tokens=max_new_tokens,
                                min_new_tokens=min_new_tokens, use_cache=use_cache)
    elif spec.decode == "quiet":
        with torch.no_grad():
            runner = SequenceRunner(model, use_cache=use_cache)
            step = runner.feed_ids(batch["input_ids"], batch["attention_mask"], hidden_states=True)
            decoded = quiet_decode(model, runner, step.last_hidden, n_ahead=spec.quiet_n_ahead,
                                   max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    else:
        decoded = greedy_decode(
            model, batch["input_ids"], batch["attention_mask"], max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            use_cache=use_cache,
        )
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
