"""The one record type every reader produces and every method lays out."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    """A reasoning problem: question, chain-of-thought steps, final answer.

    `origin` is "path:line" of the record it was read from, so that later stages (tokenisation,
    length checks) can still point the user at the offending line.
    """

    question: str
    steps: tuple[str, ...]
    answer: str
    origin: str = ""

    @property
    def cot(self) -> str:
        """The chain of thought as one string (steps joined by single spaces)."""
        return " ".join(self.steps)

    def without_last_step(self) -> "Example":
        """The example with its final CoT step removed (the paper's training default).

        The last GSM8K-Aug step usually states the answer itself (`<<9*2=18>>`); keeping it lets the
        teacher copy the answer instead of reasoning towards it.
        """
        return Example(self.question, self.steps[:-1], self.answer, self.origin)
