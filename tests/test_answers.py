"""Tests for dartlm.eval.answers: number, choice and ProsQA answer extraction and scoring."""

from __future__ import annotations

import pytest

from dartlm.eval.answers import (
    Score,
    canonical_number,
    extract_choice,
    extract_choice_flexible,
    extract_flexible,
    extract_strict,
    normalize_number,
    numbers_match,
    prosqa_choice,
    prosqa_match,
    score_answer,
)

PROSQA_Q = "Every gerpus is a terpus. Sally is a gerpus. Every terpus is a sterpus. Is Sally a hilpus or sterpus?"
PROSQA_T = "Sally is a sterpus."


@pytest.mark.parametrize("text, value", [
    ("1,000", 1000.0), ("$18", 18.0), ("-3", -3.0), ("18.", 18.0), ("2.50", 2.5), (" 42 ", 42.0),
    ("1,234,567.5", 1234567.5), ("\u22127", -7.0), ("-9867630.0", -9867630.0), ("2.0107e-06", 2.0107e-06),
    ("1/2", None), ("", None), ("abc", None), ("nan", None), ("inf", None), ("1,00", None), ("18 apples", None),
])
def test_normalize_number(text, value):
    assert normalize_number(text) == value


def test_canonical_number():
    assert [canonical_number(v) for v in (18.0, -9867630.0, 2.5, 0.5, 7, "1,000", " 18 ", "-3")] == \
        ["18", "-9867630", "2.5", "0.5", "7", "1000", "18", "-3"]
    assert canonical_number("12345678901234567890") == "12345678901234567890"  # no float rounding
    assert canonical_number(1 / 3) == "0.3333333333333333"
    assert canonical_number(float("nan")) is None
    assert canonical_number(True) is None
    assert canonical_number("eighteen") is None


@pytest.mark.parametrize("text, strict, flexible", [
    ("<<16-3-4=9>> <<9*2=18>> Answer: 18", "18", "18"),
    ("Answer: 18 apples. 5 left", "18", "5"),
    ("Answer: 1,000", "1,000", "1,000"),
    ("Answer: $18.", "18", "18"),
    ("Answer:-3", "-3", "-3"),
    ("<<2-5=-3>> Answer: -3", "-3", "-3"),
    ("Answer: 7 Answer: 9 and then 10", "9", "10"),  # strict reads after the LAST separator
    ("The total is 16-3 so 13 eggs", None, "13"),  # no separator: strict None, flexible still finds it
    ("16-3", None, "3"),  # an operator minus is not a sign
    ("Answer: about 18", None, "18"),  # strict wants the number right after the separator
    ("Answer:", None, None),
    ("", None, None),
])
def test_extract_numbers(text, strict, flexible):
    assert extract_strict(text) == strict
    assert extract_flexible(text) == flexible


def test_extract_strict_custom_separator():
    assert extract_strict("so #### 12", separator="####") == "12"
    assert extract_strict("Answer: 3 The answer is: 4", separator="The answer is:") == "4"
    assert extract_strict("Answer: 3", separator="") is None


def test_numbers_match():
    assert numbers_match("1,000", "1000")
    assert numbers_match("$18.", "18")
    assert numbers_match("-9867630", "-9867630.0")
    assert numbers_match("-9867630", -9867630.0)
    assert not numbers_match("9867630", "-9867630")
    assert numbers_match("0.33333", 1 / 3)
    assert not numbers_match("0.333", 1 / 3)
    assert not numbers_match("0.3333", 1 / 3, rel_tol=1e-5)
    assert numbers_match("1.3333333", "1.3333333333333333")
    assert numbers_match("0.0000020107", "2.0107e-06")
    assert not numbers_match("0", "2.0107e-06", abs_tol=1e-9)
    assert not numbers_match(None, "18")
    assert not numbers_match("eighteen", "18")
    assert not numbers_match("18", "n/a")


@pytest.mark.parametrize("text, strict, flexible", [
    ("Answer: (B)", "B", "B"),
    ("Answer: B", "B", "B"),
    ("Answer: B) bank", "B", "B"),
    ("Answer:C.", "C", "C"),
    ("Answer: bank", None, None),
    ("Answer: Bank (A)", None, "A"),  # "Bank" starts with B but is a word, not a letter
    ("I pick (D) because of E", None, "E"),
    ("Answer: A then Answer: (E)", "E", "E"),
    ("Answer: F", None, None),
    ("no letters here", None, None),
])
def test_extract_choice(text, strict, flexible):
    assert extract_choice(text) == strict
    assert extract_choice_flexible(text) == flexible


@pytest.mark.parametrize("prediction, correct", [
    ("Sally is a sterpus.", True),
    ("sterpus", True),
    ("Sally is a hilpus.", False),
    ("Sally is a hilpus or sterpus.", False),  # naming both options is not an answer
    ("Sally is a gerpus.", False),
    ("", False),
])
def test_prosqa_match(prediction, correct):
    assert prosqa_match(prediction, PROSQA_T, PROSQA_Q) is correct


def test_prosqa_options_are_whole_words():
    # "impus" is a substring of "yimpus": only whole words count as naming an option.
    question = "Every yimpus is a impus. Is Tom a impus or yimpus?"
    assert prosqa_match("Tom is a yimpus.", "Tom is a yimpus.", question)
    assert not prosqa_match("Tom is a yimpus.", "Tom is a impus.", question)
    assert prosqa_choice("Tom is a yimpus.", question) == "yimpus"
    assert prosqa_match("Tom is an impus.", "Tom is an impus.", "Is Tom a yimpus or an impus?")


def test_prosqa_without_options_needs_the_sentence():
    assert prosqa_match("so Sally is a sterpus.", PROSQA_T, "")
    assert not prosqa_match("sterpus", PROSQA_T, "")


def test_score_number():
    score = score_answer("number", "<<16-3-4=9>> <<9*2=18>> Answer: 18", "18")
    assert score == Score(True, True, "18", "18")
    score = score_answer("number", "Answer: 18 apples. 5 left", "18")
    assert score == Score(True, False, "18", "5")
    assert score_answer("number", "it is 1,000", "1000") == Score(False, True, None, "1,000")
    assert score_answer("number", "The answer is: 4", "4", separator="The answer is:").strict


def test_score_choice():
    assert score_answer("choice", "Answer: (B) library", "B") == Score(True, True, "B", "B")
    assert score_answer("choice", "Answer: A, no wait, (C)", "C") == Score(False, True, "A", "C")


def test_score_entity():
    score = score_answer("entity", f"Sally is a scrompus. Answer: {PROSQA_T}", PROSQA_T, question=PROSQA_Q)
    assert score == Score(True, True, "sterpus", "sterpus")
    score = score_answer("entity", PROSQA_T, PROSQA_T, question=PROSQA_Q)
    assert score == Score(False, True, None, "sterpus")  # no separator: strict fails
    score = score_answer("entity", "Answer: Sally is a hilpus.", PROSQA_T, question=PROSQA_Q)
    assert (score.strict, score.flexible, score.strict_prediction) == (False, False, "hilpus")
    score = score_answer("entity", "Answer: maybe", PROSQA_T, question=PROSQA_Q)
    assert (score.strict, score.strict_prediction) == (False, "maybe")


def test_score_unknown_kind():
    with pytest.raises(ValueError, match="unknown answer kind 'text'"):
        score_answer("text", "Answer: 1", "1")
