"""General arithmetic text for pretraining a small base model: the stand-in for what a pretrained LLM knows.

The paper fine-tunes pretrained LLMs. At CPU scale no pretrained model knows the synthetic task's arithmetic, so
the demo's base model is first pretrained on this text. It is deliberately *not* the evaluation task
(`dartlm.data.synthetic`): no line uses that task's sentence templates or its `question||cot #### answer` layout,
and the word problems here are about places and quantities, not about a person's items. What it teaches is what
the task needs a model to know already:

- bare expressions with one to four operations, answered with and without the intermediate results
  (``9 + 4 - 7 = 6``; ``9 + 4 - 7: 9 + 4 = 13, 13 - 7 = 6.``),
- single arithmetic facts in words (``Adding 4 to 9 gives 13.``),
- multi-step chains in other wordings, sometimes with ``<<a+b=c>>`` annotations (the common GSM8K-Aug notation)
  and sometimes asked and answered (``... How many are there now? 6``).

Every line is a pure function of (seed, index), so the corpus is reproducible and never stored.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_SYMBOL = {"+": "+", "-": "-", "*": "*"}
_FACTS = {
    "+": ("Adding {b} to {a} gives {c}.", "{a} plus {b} is {c}.", "The sum of {a} and {b} is {c}.",
          "{b} more than {a} is {c}.", "If you add {b} to {a}, you get {c}."),
    "-": ("Taking {b} from {a} leaves {c}.", "{a} minus {b} is {c}.", "{b} less than {a} is {c}.",
          "The difference between {a} and {b} is {c}.", "If you subtract {b} from {a}, you get {c}."),
    "*": ("{a} times {b} is {c}.", "The product of {a} and {b} is {c}.", "{b} groups of {a} make {c}."),
}
# Quantities in places: a different world from the evaluation task's people and their items.
_PLACES = (("birds", "on the wire"), ("cars", "in the car park"), ("fish", "in the pond"),
           ("people", "on the bus"), ("boats", "in the harbour"), ("sheep", "in the field"),
           ("plates", "on the table"), ("bikes", "at the station"), ("lamps", "in the hall"),
           ("trees", "in the garden"), ("jars", "on the shelf"), ("ducks", "on the lake"))
_STEP = {
    "+": ("{b} more arrive.", "Then {b} more come.", "Another {b} join them.", "{b} are added."),
    "-": ("{b} leave.", "Then {b} go away.", "{b} are taken away.", "After that, {b} are removed."),
    "*": ("The number becomes {b} times as large.", "Then the count is multiplied by {b}."),
}
_ASK = ("How many {things} are {place} now?", "How many {things} are there in the end?",
        "What is the number of {things} {place} now?")


@dataclass(frozen=True)
class ArithmeticText:
    """The generator's range: operands up to `max_operand`, values kept in 0..`max_value`, chains up to
    `max_ops` operations. The defaults cover the demo task (operands 1..9, up to 3 steps, + and -) with room."""

    max_operand: int = 20
    max_value: int = 99
    max_ops: int = 4
    operations: str = "+-"
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.max_operand <= self.max_value:
            raise ValueError(f"max_operand must be in 1..max_value ({self.max_value}), got {self.max_operand}")
        if self.max_ops < 1:
            raise ValueError(f"max_ops must be >= 1, got {self.max_ops}")
        if not self.operations or set(self.operations) - set(_SYMBOL):
            raise ValueError(f"operations must be a non-empty subset of '+-*', got {self.operations!r}")


def _apply(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def chain(spec: ArithmeticText, rng: random.Random, ops: int) -> tuple[int, list[tuple[str, int, int, int]]]:
    """A start value and `ops` steps (op, a, b, result) whose values all stay in 0..max_value."""
    value = start = rng.randint(1, spec.max_operand)
    steps = []
    for _ in range(ops):
        choices = []
        for op in spec.operations:
            if op == "+" and value + 1 <= spec.max_value:
                choices.append((op, range(1, min(spec.max_operand, spec.max_value - value) + 1)))
            elif op == "-" and value >= 1:
                choices.append((op, range(1, min(spec.max_operand, value) + 1)))
            elif op == "*" and 1 <= value and 2 * value <= spec.max_value:
                choices.append((op, range(2, min(spec.max_operand, spec.max_value // value) + 1)))
        op, operands = rng.choice(choices)  # '+' or '-' is always possible
        b = rng.choice(operands)
        steps.append((op, value, b, _apply(op, value, b)))
        value = steps[-1][3]
    return start, steps


def _expression(start: int, steps) -> str:
    return " ".join([str(start)] + [f"{op} {b}" for op, _, b, _ in steps])


def line(spec: ArithmeticText, index: int) -> str:
    """Line `index` of the corpus (deterministic for the spec's seed)."""
    rng = random.Random(f"{spec.seed}:{index}")
    kind = rng.random()
    ops = rng.randint(1, spec.max_ops)
    start, steps = chain(spec, rng, ops)
    answer = steps[-1][3]
    if kind < 0.25:  # a bare expression, answered at once
        return f"{_expression(start, steps)} = {answer}"
    if kind < 0.40:  # the same, with the intermediate results
        worked = ", ".join(f"{a} {op} {b} = {c}" for op, a, b, c in steps)
        return f"{_expression(start, steps)}: {worked}. The result is {answer}."
    if kind < 0.60:  # one fact in words
        op, a, b, c = steps[0]
        return rng.choice(_FACTS[op]).format(a=a, b=b, c=c)
    things, place = rng.choice(_PLACES)
    story = [f"There are {start} {things} {place}."] + [rng.choice(_STEP[op]).format(b=b) for op, _, b, _ in steps]
    question = rng.choice(_ASK).format(things=things, place=place)
    if kind < 0.80:  # a story, asked and answered directly
        return f"{' '.join(story)} {question} {answer}"
    notes = " ".join(f"<<{a}{_SYMBOL[op]}{b}={c}>>" for op, a, b, c in steps)
    return f"{' '.join(story)} {question} {notes} So there are {answer} {things}."


def corpus(spec: ArithmeticText, count: int, start: int = 0) -> list[str]:
    """Lines start..start+count-1."""
    return [line(spec, i) for i in range(start, start + count)]
