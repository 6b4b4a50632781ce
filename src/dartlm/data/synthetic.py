"""A synthetic multi-step arithmetic word-problem task in the GSM8K-Aug (iCoT) text layout.

Each problem is a chain: a person starts with `a` items and `steps` operations follow, each applying
one new operand to the running total, so the answer depends on every step. The CoT is one
`<<x op b=y>>` annotation per operation and the last one yields the answer, as in GSM8K-Aug.

Every value stays an integer in 1..MAX_RESULT: subtraction never reaches zero (so a later
multiplication cannot erase the earlier steps) and division is only by an exact divisor.

Problems are deduplicated by their computation (the CoT string), not only by wording, so the same
arithmetic never appears in two splits reworded. A problem's split is a hash of its CoT (80/10/10),
so membership is a pure function of the computation: splits asked for separately, or generated
with other sizes or seeds, stay disjoint.

Specs: "synthetic:train?steps=3&max_value=20&ops=+-*&seed=0&n=2000" (see `parse_synthetic_spec`).
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, fields, replace
from typing import Iterable

from dartlm.data.example import Example

SPEC_PREFIX = "synthetic:"
SPLITS = ("train", "val", "test")
DEFAULT_SIZES = {"train": 2000, "val": 200, "test": 200}
MAX_RESULT = 999
MAX_STEPS = 8
_SHARES = {"train": 0.8, "val": 0.1, "test": 0.1}
_RESTARTS = 500  # chains that get stuck (e.g. '*' only, running past MAX_RESULT) are redrawn

_NAMES = (("Mia", "she"), ("Noah", "he"), ("Ava", "she"), ("Liam", "he"), ("Zoe", "she"),
          ("Omar", "he"), ("Lena", "she"), ("Ravi", "he"), ("Sara", "she"), ("Ben", "he"),
          ("Ivy", "she"), ("Theo", "he"), ("Nora", "she"), ("Kai", "he"), ("Eva", "she"),
          ("Leo", "he"))
_PRONOUNS = {"she": ("she", "her", "her"), "he": ("he", "him", "his")}
_ITEMS = (("marble", "marbles"), ("sticker", "stickers"), ("apple", "apples"), ("coin", "coins"),
          ("card", "cards"), ("shell", "shells"), ("stamp", "stamps"), ("pencil", "pencils"),
          ("bead", "beads"), ("cookie", "cookies"), ("book", "books"), ("toy car", "toy cars"),
          ("ribbon", "ribbons"), ("button", "buttons"))
_START = ("{name} has {a} {item}.", "{name} starts with {a} {item}.", "{name} owns {a} {item}.",
          "{name} keeps {a} {item} in a box.")
# Operand-first phrasings only ("gives away 1", never "gives away 1 marbles"), so b=1 reads fine.
_OPS = {
    "+": ("{He} buys {b} more.", "{He} finds {b} more.", "A friend gives {him} {b} more.",
          "{His} aunt sends {him} {b} more.", "{He} wins {b} more."),
    "-": ("{He} gives away {b}.", "{He} loses {b} of them.", "{He} gives {b} to a friend.",
          "{He} sells {b} of them.", "{He} uses up {b}."),
    "*": ("{His} stash becomes {b} times as large.", "Each one is swapped for {b} new ones.",
          "{His} pile grows to {b} times its size."),
    "/": ("{He} keeps one of {b} equal piles.", "{He} keeps one of {b} equal shares."),
}
_CONNECTORS = ("", "", "Then ", "Next, ", "Later, ")
_QUESTION = ("How many {items} does {he} have now?", "How many {items} does {name} have in the end?",
             "How many {items} does {name} end up with?", "How many {items} does {he} have at the end?")


@dataclass(frozen=True)
class SyntheticTask:
    """Parameters of the task; difficulty grows with `steps` (chain length) and `max_value`."""

    steps: int = 3
    max_value: int = 20
    operations: str = "+-*"
    seed: int = 0

    def __post_init__(self) -> None:
        """Reject parameters the generator cannot honour, naming the field."""
        if not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps must be in 1..{MAX_STEPS}, got {self.steps}")
        if not 1 <= self.max_value <= MAX_RESULT // 2:
            raise ValueError(f"max_value must be in 1..{MAX_RESULT // 2}, got {self.max_value}")
        ops = self.operations
        if not ops or set(ops) - set("+-*/") or len(set(ops)) != len(ops):
            raise ValueError(f"operations must be a non-empty subset of '+-*/' without repeats,"
                             f" got {ops!r}")


def _operands(op: str, value: int, max_value: int) -> range | list[int]:
    """Operands `b` for which `value op b` stays an integer in 1..MAX_RESULT."""
    if op == "+":
        return range(1, min(max_value, MAX_RESULT - value) + 1)
    if op == "-":
        return range(1, min(max_value, value - 1) + 1)
    if op == "*":  # b=1 would make the step a no-op
        return range(2, min(max_value, MAX_RESULT // value) + 1)
    return [b for b in range(2, min(max_value, value) + 1) if value % b == 0]


def _apply(op: str, a: int, b: int) -> int:
    """`a op b` for the four operations (division is exact by construction)."""
    return a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a // b


def _chain(task: SyntheticTask, rng: random.Random) -> tuple[int, list[tuple[str, int, int, int]]]:
    """A start value and `task.steps` (op, a, b, result) steps; redrawn when a chain gets stuck."""
    for _ in range(_RESTARTS):
        start = value = rng.randint(1, task.max_value)
        chain = []
        for _ in range(task.steps):
            choices = [(op, bs) for op in task.operations if (bs := _operands(op, value, task.max_value))]
            if not choices:
                break
            op, bs = rng.choice(choices)
            b = rng.choice(bs)
            chain.append((op, value, b, _apply(op, value, b)))
            value = chain[-1][3]
        else:
            return start, chain
    raise ValueError(f"operations {task.operations!r} cannot chain {task.steps} steps with operands"
                     f" up to {task.max_value} and values in 1..{MAX_RESULT}; mix operations"
                     " (e.g. '+-*'), or use fewer steps")


def generate_problem(task: SyntheticTask, rng: random.Random) -> Example:
    """One templated word problem with its `<<a op b=c>>` steps and the final value as answer."""
    start, chain = _chain(task, rng)
    name, gender = rng.choice(_NAMES)
    he, him, his = _PRONOUNS[gender]
    item, items = rng.choice(_ITEMS)
    words = {"name": name, "he": he, "him": him, "his": his, "items": items,
             "He": he.capitalize(), "His": his.capitalize()}
    sentences = [rng.choice(_START).format(a=start, item=item if start == 1 else items, **words)]
    for op, _, b, _ in chain:
        sentence = rng.choice(_OPS[op]).format(b=b, **words)
        connector = rng.choice(_CONNECTORS)
        # Op templates never open with a name, so lower-casing the first letter is safe.
        sentences.append(connector + sentence[0].lower() + sentence[1:] if connector else sentence)
    sentences.append(rng.choice(_QUESTION).format(**words))
    steps = tuple(f"<<{a}{op}{b}={c}>>" for op, a, b, c in chain)
    return Example(" ".join(sentences), steps, str(chain[-1][3]), origin="synthetic")


def split_of(example: Example) -> str:
    """The split a problem belongs to: an 80/10/10 hash of its computation (CoT)."""
    digest = hashlib.sha256(example.cot.encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % 10
    return "train" if bucket < 8 else "val" if bucket == 8 else "test"


def _collect(task: SyntheticTask, wanted: dict[str, int]) -> dict[str, list[Example]]:
    """Draw from one seeded stream, keeping each new computation in its hashed split until full."""
    for split, n in wanted.items():
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n_{split} must be a non-negative integer, got {n!r}")
    rng = random.Random(task.seed)
    out: dict[str, list[Example]] = {split: [] for split in wanted}
    seen: set[str] = set()
    # Enough draws for the rarest split with a wide margin; a space too small fails here, not forever.
    budget = 10_000 + 10 * int(max(n / _SHARES[split] for split, n in wanted.items()))
    for _ in range(budget):
        if all(len(out[split]) >= n for split, n in wanted.items()):
            return out
        example = generate_problem(task, rng)
        if example.cot in seen:
            continue
        seen.add(example.cot)
        split = split_of(example)
        if split in out and len(out[split]) < wanted[split]:
            out[split].append(replace(example, origin=f"synthetic:{split}:{len(out[split])}"))
    if all(len(out[split]) >= n for split, n in wanted.items()):
        return out
    got = ", ".join(f"{split}={len(out[split])}/{n}" for split, n in wanted.items())
    raise ValueError(f"{task}: problem space too small: only {len(seen)} distinct problems in"
                     f" {budget} draws, filled {got}; raise steps or max_value, or ask for fewer")


def generate_splits(task: SyntheticTask, n_train: int, n_val: int, n_test: int) -> dict[str, list[Example]]:
    """Disjoint train/val/test lists, deterministic for the task (seed included)."""
    return _collect(task, {"train": n_train, "val": n_val, "test": n_test})


def write_icot(examples: Iterable[Example], path: str | os.PathLike) -> None:
    """Write `question||<<a>> <<b>> #### answer` lines, refusing records the reader would mangle."""
    lines = []
    for ex in examples:
        if any(bad in ex.question for bad in ("||", "####", "\n", "\r")) or ex.question != ex.question.strip():
            raise ValueError(f"{ex.origin}: question cannot be written as one iCoT line: {ex.question!r}")
        if any(not step or step != "".join(step.split()) or "####" in step for step in ex.steps):
            raise ValueError(f"{ex.origin}: steps must be non-empty and free of whitespace: {ex.steps!r}")
        if not ex.answer or ex.answer != " ".join(ex.answer.split()) or "\n" in ex.answer:
            raise ValueError(f"{ex.origin}: answer cannot be written as one iCoT line: {ex.answer!r}")
        lines.append(f"{ex.question}||{' '.join(ex.steps)} #### {ex.answer}\n")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(lines)


def _int(key: str, text: str) -> int:
    """An integer spec value, or ValueError naming the key."""
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"synthetic spec: {key}={text!r} is not an integer") from None


def parse_synthetic_spec(spec: str) -> tuple[SyntheticTask, str, int]:
    """'synthetic:train?steps=3&max_value=20&ops=+-*&seed=0&n=2000' -> (task, split, n)."""
    if not spec.startswith(SPEC_PREFIX):
        raise ValueError(f"synthetic spec must start with {SPEC_PREFIX!r}, got {spec!r}")
    split, _, query = spec[len(SPEC_PREFIX):].partition("?")
    if split not in SPLITS:
        raise ValueError(f"synthetic spec: split must be one of {', '.join(SPLITS)}, got {split!r}")
    # Parsed by hand: urllib would decode the '+' of ops=+-* as a space.
    values: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        if key not in ("steps", "max_value", "ops", "seed", "n"):
            raise ValueError(f"synthetic spec: unknown key {key!r}"
                             " (known: steps, max_value, ops, seed, n)")
        if not eq or not value:
            raise ValueError(f"synthetic spec: key {key!r} has no value")
        if key in values:
            raise ValueError(f"synthetic spec: key {key!r} given twice")
        values[key] = value
    defaults = SyntheticTask()
    kwargs = {f.name: getattr(defaults, f.name) for f in fields(SyntheticTask)}
    for key in ("steps", "max_value", "seed"):
        if key in values:
            kwargs[key] = _int(key, values[key])
    kwargs["operations"] = values.get("ops", defaults.operations)
    n = _int("n", values["n"]) if "n" in values else DEFAULT_SIZES[split]
    if n < 1:
        raise ValueError(f"synthetic spec: n must be at least 1, got {n}")
    try:
        task = SyntheticTask(**kwargs)
    except ValueError as e:
        key = {"operations": "ops"}.get(str(e).split()[0], str(e).split()[0])
        raise ValueError(f"synthetic spec: bad {key}: {e}") from None
    return task, split, n


def load_synthetic(spec: str) -> list[Example]:
    """The first n problems of the requested split; membership never depends on the split asked."""
    task, split, n = parse_synthetic_spec(spec)
    return _collect(task, {split: n})[split]
