"""Tests for dartlm.data.synthetic: arithmetic, splits, determinism, iCoT round-trip and specs."""

from __future__ import annotations

import random
import re

import pytest

from dartlm.data.example import Example
from dartlm.data.readers import read_examples
from dartlm.data.synthetic import (
    MAX_RESULT, SyntheticTask, generate_problem, generate_splits, load_synthetic,
    parse_synthetic_spec, split_of, write_icot,
)

STEP = re.compile(r"<<(\d+)([-+*/])(\d+)=(\d+)>>")


def check_arithmetic(example: Example, task: SyntheticTask) -> None:
    """Every step is correct, bounded, uses an allowed op and feeds the next; the last is the answer."""
    assert len(example.steps) == task.steps
    previous = None
    for step in example.steps:
        match = STEP.fullmatch(step)
        assert match, step
        a, op, b, c = int(match[1]), match[2], int(match[3]), int(match[4])
        assert op in task.operations
        assert 1 <= b <= task.max_value
        assert 1 <= c <= MAX_RESULT and 1 <= a <= MAX_RESULT  # positive: no step can be erased by a later *0
        expected = {"+": a + b, "-": a - b, "*": a * b}.get(op)
        if op == "/":
            assert a % b == 0, step
            expected = a // b
        assert c == expected, step
        if previous is None:
            assert 1 <= a <= task.max_value and str(a) in example.question
        else:
            assert a == previous  # the chain: each step continues from the last result
        previous = c
    assert example.answer == str(previous)


@pytest.mark.parametrize("task", [
    SyntheticTask(), SyntheticTask(steps=1, max_value=9), SyntheticTask(steps=8, max_value=50),
    SyntheticTask(steps=5, operations="+-*/", seed=3), SyntheticTask(steps=6, operations="*/"),
])
def test_problems_are_correct_chains(task):
    rng = random.Random(task.seed)
    for _ in range(300):
        example = generate_problem(task, rng)
        check_arithmetic(example, task)
        question = example.question
        assert "||" not in question and "####" not in question and "\n" not in question
        assert question.endswith("?") and question == question.strip()
        assert len(question.split()) <= 85
        # Every operand is stated in the story, in order, so the model has to read the numbers.
        numbers = [int(n) for n in re.findall(r"\d+", question)]
        operands = [int(STEP.fullmatch(s)[3]) for s in example.steps]
        assert numbers == [int(STEP.fullmatch(example.steps[0])[1])] + operands


def test_questions_stay_short_with_eight_steps():
    rng = random.Random(0)
    lengths = [len(generate_problem(SyntheticTask(steps=8), rng).question.split()) for _ in range(2000)]
    assert max(lengths) <= 80 and sum(lengths) / len(lengths) < 70


def test_splits_are_deterministic_sized_and_disjoint():
    task = SyntheticTask(steps=2, max_value=15)
    splits = generate_splits(task, 300, 40, 50)
    assert splits == generate_splits(task, 300, 40, 50)
    assert {k: len(v) for k, v in splits.items()} == {"train": 300, "val": 40, "test": 50}
    questions = {k: {e.question for e in v} for k, v in splits.items()}
    cots = {k: {e.cot for e in v} for k, v in splits.items()}
    for name, examples in splits.items():
        assert len(questions[name]) == len(examples) == len(cots[name])  # no duplicates inside
        assert [e.origin for e in examples] == [f"synthetic:{name}:{i}" for i in range(len(examples))]
        assert all(split_of(e) == name for e in examples)
    assert not questions["train"] & questions["val"] and not questions["train"] & questions["test"]
    assert not questions["val"] & questions["test"]
    assert not cots["train"] & cots["test"] and not cots["train"] & cots["val"]
    other = generate_splits(SyntheticTask(steps=2, max_value=15, seed=1), 300, 40, 50)
    assert [e.question for e in other["train"]] != [e.question for e in splits["train"]]
    # Membership is a function of the computation alone, so even other seeds never leak across.
    assert not {e.cot for e in other["train"]} & (cots["val"] | cots["test"])


def test_separately_loaded_splits_are_disjoint_and_match_generate_splits():
    test = load_synthetic("synthetic:test?steps=2&max_value=15&n=60")
    train = load_synthetic("synthetic:train?steps=2&max_value=15&n=500")
    val = load_synthetic("synthetic:val?steps=2&max_value=15&n=60")
    assert (len(train), len(val), len(test)) == (500, 60, 60)
    sets = [{e.question for e in s} for s in (train, val, test)]
    assert not sets[0] & sets[1] and not sets[0] & sets[2] and not sets[1] & sets[2]
    assert test == generate_splits(SyntheticTask(steps=2, max_value=15), 0, 0, 60)["test"]
    assert train[:100] == load_synthetic("synthetic:train?steps=2&max_value=15&n=100")


def test_write_icot_round_trips(tmp_path):
    examples = generate_splits(SyntheticTask(steps=4, operations="+-*/"), 50, 5, 5)["train"]
    path = tmp_path / "train.txt"
    write_icot(examples, path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 50 and lines[0].count("||") == 1 and " #### " in lines[0]
    back = read_examples(path)
    assert [(e.question, e.steps, e.answer) for e in back] == [(e.question, e.steps, e.answer) for e in examples]


def test_write_icot_refuses_malformed_records(tmp_path):
    with pytest.raises(ValueError, match="question"):
        write_icot([Example("a || b?", ("<<1+1=2>>",), "2")], tmp_path / "x.txt")
    with pytest.raises(ValueError, match="steps"):
        write_icot([Example("q?", ("<<1 + 1=2>>",), "2")], tmp_path / "x.txt")


def test_parse_spec_happy_path_and_defaults():
    task, split, n = parse_synthetic_spec("synthetic:val?steps=5&max_value=30&ops=+-*/&seed=7&n=123")
    assert (task, split, n) == (SyntheticTask(5, 30, "+-*/", 7), "val", 123)
    assert parse_synthetic_spec("synthetic:train") == (SyntheticTask(), "train", 2000)
    assert parse_synthetic_spec("synthetic:test?steps=4") == (SyntheticTask(steps=4), "test", 200)


@pytest.mark.parametrize("spec, fragment", [
    ("synthetic:train?colour=red", "'colour'"),
    ("synthetic:dev?n=5", "split"),
    ("synthetic:train?steps=three", "steps"),
    ("synthetic:train?n=2.5", "n="),
    ("synthetic:train?seed=", "'seed'"),
    ("synthetic:train?steps=9", "steps"),
    ("synthetic:train?max_value=0", "max_value"),
    ("synthetic:train?ops=+x", "ops"),
    ("synthetic:train?n=0", "n"),
    ("synthetic:train?n=1&n=2", "'n'"),
    ("gsm8k:train", "synthetic:"),
])
def test_parse_spec_errors_name_the_problem(spec, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        parse_synthetic_spec(spec)


def test_too_small_space_raises():
    with pytest.raises(ValueError, match="too small"):
        generate_splits(SyntheticTask(steps=1, max_value=2), 1000, 10, 10)


def test_unchainable_operations_raise():
    with pytest.raises(ValueError, match="cannot chain"):
        generate_problem(SyntheticTask(steps=8, operations="*"), random.Random(0))


def test_generating_thousands_is_cheap():
    splits = generate_splits(SyntheticTask(steps=4, max_value=20), 4000, 500, 500)
    assert sum(len(v) for v in splits.values()) == 5000
    assert len({e.answer for e in splits["train"]}) > 100  # answers are spread, not a few constants
