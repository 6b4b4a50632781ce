"""What a way of thinking at inference owns: its prompt, its decoding, and how it is described and probed.

An exported model says how it thinks in `dartlm_prompt.json` (`PromptSpec.decode`); `thinking_for(spec)` finds the
`Thinking` registered under that name. Everything that answers, scores, probes or documents a model (generation,
evaluation, lm-eval tasks, latency, probes, model cards, the CLI) asks it instead of comparing decode strings, so a
new way of thinking is one class, registered with `register_thinking`.
"""

from __future__ import annotations

import json
from typing import Callable, Sequence

import torch
from torch import nn

from dartlm.data.layout import Segments, build_pathway
from dartlm.model.export import PromptSpec
from dartlm.thinking.decoding import Decoded, SequenceRunner, Step, greedy_decode


class PromptNotExpressibleError(ValueError):
    """The model's prompt cannot be written as text that tokenises back to its ids."""


class Thinking:
    """The default: the prompt ends with the separator (after C thought tokens, if any) and the model writes the
    answer; greedy decoding with a KV cache. Subclasses override what differs."""

    name: str = ""
    writes_chain: bool = False  # the model writes its reasoning, the separator, then the answer
    max_new_tokens: int = 32  # default decoding budget
    token_prompted: bool = True  # prompts and decoding steps are token ids only (so inference engines can run it)
    # Modules of the method's own that travel beside the exported model: attribute on the model -> file name.
    side_modules: dict[str, str] = {}

    # --- loading -----------------------------------------------------------------------------------------------

    def build_side_module(self, attribute: str, hidden: int, spec: PromptSpec) -> nn.Module:
        """An untrained module for `attribute` of a model of width `hidden` (its weights are then loaded)."""
        raise NotImplementedError(f"{type(self).__name__} has no side module {attribute!r}")

    def needed_side_modules(self, spec: PromptSpec) -> dict[str, str]:
        """The side modules this model uses (attribute -> file name)."""
        return dict(self.side_modules)

    # --- prompting and decoding --------------------------------------------------------------------------------

    def thought_ids(self, tokenizer, spec: PromptSpec) -> list[int]:
        if not spec.num_thought_tokens:
            return []
        return [tokenizer.convert_tokens_to_ids(spec.thought_token)] * spec.num_thought_tokens

    def prompt(self, seg: Segments, tokenizer, spec: PromptSpec) -> tuple[int, ...]:
        """Token ids of one question's inference prompt, built from its training segments."""
        return tuple(build_pathway(seg, self.thought_ids(tokenizer, spec), with_answer=False).input_ids)

    def decode(self, model, tokenizer, spec: PromptSpec, batch: dict[str, torch.Tensor], *, max_new_tokens: int,
               min_new_tokens: int = 0, use_cache: bool = True) -> Decoded:
        """Greedy generations for a left-padded batch of prompts."""
        return greedy_decode(model, batch["input_ids"], batch["attention_mask"], max_new_tokens=max_new_tokens,
                             min_new_tokens=min_new_tokens, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, use_cache=use_cache)

    def split(self, text: str, spec: PromptSpec) -> tuple[str, str]:
        """(answer, reasoning) of what the model wrote."""
        return text.strip(), ""

    def scored_text(self, text: str, spec: PromptSpec) -> str:
        """What the answer scorer reads: the model was prompted with the separator, so it is written back in."""
        return f"{spec.separator} {text}"

    # --- describing --------------------------------------------------------------------------------------------

    def prompt_text(self, question: str, spec: PromptSpec) -> str:
        """The prompt as plain text (lm-evaluation-harness); raises PromptNotExpressibleError when there is none."""
        thoughts = spec.thought_token * spec.num_thought_tokens if spec.num_thought_tokens else ""
        return question + thoughts + spec.joiner + spec.separator

    def layout(self, spec: PromptSpec, bos: str, separator: str) -> str:
        """One sentence for the model card: what the prompt is and what the model writes."""
        if spec.num_thought_tokens:
            return f"{bos}question + `{spec.thought_token}` x {spec.num_thought_tokens} + {separator}, then the answer"
        return f"{bos}question + {separator}, then the answer"

    def snippet(self, spec: PromptSpec, bos: str, separator: str) -> list[str]:
        """Lines of Python that answer `question` with stock transformers (the model card's example); the lines
        before them define `tokenizer`, `model`, `encode(text)` and `question`."""
        thoughts = ""
        lines = []
        if spec.num_thought_tokens:
            lines.append(f"thought = tokenizer.convert_tokens_to_ids({spec.thought_token!r})")
            thoughts = f" + [thought] * {spec.num_thought_tokens}"
        return lines + [
            f"ids = {bos}encode(question){thoughts} + encode({separator})",
            f"output = model.generate(torch.tensor([ids]), max_new_tokens={self.max_new_tokens}, do_sample=False,",
            "                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)",
            "print(tokenizer.decode(output[0, len(ids):], skip_special_tokens=True).strip())",
        ]

    # --- probing what the thoughts carry (probe.py) -------------------------------------------------------------

    def probed_thoughts(self, spec: PromptSpec) -> int:
        """How many thought positions the probe reads before z_N (the state before the answer)."""
        return spec.num_thought_tokens

    def probe_prompts(self, tokenizer, spec: PromptSpec, questions: Sequence[str], segment: Callable,
                      write: Callable) -> tuple[list[tuple[int, ...]], list[bool], dict[str, int]]:
        """(prompts whose last position is z_N, which questions are kept, why the others were skipped).
        segment(question, reasoning) -> Segments; write(questions) -> the model's generations."""
        return [self.prompt(segment(q, ""), tokenizer, spec) for q in questions], [True] * len(questions), {}

    def probe_states(self, runner: SequenceRunner, step: Step, tokenizer, spec: PromptSpec, width: int,
                     separator_tokens: int, stack: Callable) -> torch.Tensor:
        """Every layer's states at the thought positions and z_N, (B, layers + 1, positions, n), after the prompt
        was fed (`step`: its hidden states, `width` columns); stack(hidden_states, columns) picks the columns."""
        thoughts = self.probed_thoughts(spec)
        first = width - separator_tokens - thoughts
        return stack(step.hidden_states, list(range(first, first + thoughts)) + [width - 1])


class AnswerThinking(Thinking):
    """No-CoT, PauseFT, DART, iCoT: question [+ C thought tokens] + separator, then the answer."""

    name = "answer"


class ChainThinking(Thinking):
    """CoT: the prompt is the question; the model writes its reasoning, the separator and the answer."""

    name = "cot"
    writes_chain = True
    max_new_tokens = 256

    def prompt(self, seg: Segments, tokenizer, spec: PromptSpec) -> tuple[int, ...]:
        return tuple(seg.prefix + seg.question)

    def split(self, text: str, spec: PromptSpec) -> tuple[str, str]:
        cot, separator, answer = text.partition(spec.separator)
        return (answer.strip() if separator else ""), cot.strip()

    def scored_text(self, text: str, spec: PromptSpec) -> str:
        return text

    def prompt_text(self, question: str, spec: PromptSpec) -> str:
        return question

    def layout(self, spec: PromptSpec, bos: str, separator: str) -> str:
        return f"{bos}question, then the model writes its reasoning, {separator} and the answer"

    def snippet(self, spec: PromptSpec, bos: str, separator: str) -> list[str]:
        return [
            f"ids = {bos}encode(question)",
            f"output = model.generate(torch.tensor([ids]), max_new_tokens={self.max_new_tokens}, do_sample=False,",
            "                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)",
            "text = tokenizer.decode(output[0, len(ids):], skip_special_tokens=True)",
            f"reasoning, _, answer = text.partition({json.dumps(spec.separator)})",
            "print(answer.strip())",
        ]

    def probed_thoughts(self, spec: PromptSpec) -> int:
        return 0

    def probe_prompts(self, tokenizer, spec, questions, segment, write):
        """z_N after the model's own chain: decode it, then re-encode the chain as training lays it out."""
        prompts, kept = [], []
        for question, generation in zip(questions, write(questions)):
            kept.append(spec.separator in generation.text)
            seg = segment(question, generation.cot)
            prompts.append(tuple(seg.prefix + seg.question + seg.cot + seg.separator))
        return prompts, kept, {"no separator in the model's chain": kept.count(False)}
