"""How exported models think at inference: one `Thinking` per decode mode, found through `thinking_for(spec)`.

    base.py      the interface, and the token-prompted modes: "answer" (No-CoT, PauseFT, DART, iCoT) and "cot"
    latent.py    "latent": continuous thoughts (Coconut, CODI), used in training too
    quiet.py     "quiet": a thought before every token (the Quiet-STaR family), used in training too
    decoding.py  the greedy loop and the chunk-by-chunk runner every mode decodes with
"""

from __future__ import annotations

from dartlm.model.export import ExportError, PromptSpec
from dartlm.thinking.base import AnswerThinking, ChainThinking, PromptNotExpressibleError, Thinking
from dartlm.thinking.latent import LatentThinking
from dartlm.thinking.quiet import QuietThinking

MODES: dict[str, Thinking] = {}


def register_thinking(mode: Thinking, *, replace: bool = False) -> Thinking:
    """Make a way of thinking available under `mode.name`, the `decode` a method's prompt spec names."""
    if not mode.name:
        raise ValueError(f"{type(mode).__name__}: a way of thinking needs a name")
    if mode.name in MODES and type(MODES[mode.name]) is not type(mode) and not replace:
        raise ValueError(f"a way of thinking named {mode.name!r} is already registered "
                         f"({type(MODES[mode.name]).__name__})")
    MODES[mode.name] = mode
    return mode


for _mode in (AnswerThinking(), ChainThinking(), LatentThinking(), QuietThinking()):
    register_thinking(_mode)


def thinking_for(spec: PromptSpec) -> Thinking:
    """The way of thinking an exported model's prompt spec names."""
    try:
        return MODES[spec.decode]
    except KeyError:
        raise ExportError(f"decode {spec.decode!r} (method {spec.method}): no such way of thinking; known: "
                          f"{', '.join(MODES)}") from None


def side_module_files() -> dict[str, str]:
    """Every registered side module: attribute on the model -> the file it is saved to beside the export."""
    return {attribute: file for mode in MODES.values() for attribute, file in mode.side_modules.items()}


__all__ = ["AnswerThinking", "ChainThinking", "LatentThinking", "MODES", "PromptNotExpressibleError",
           "QuietThinking", "Thinking", "register_thinking", "side_module_files", "thinking_for"]
