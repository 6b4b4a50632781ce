"""Answer extraction and scoring as small pure functions.

Two readings of every model output, as in lm-evaluation-harness's GSM8K filters:
- strict: the answer right after the last separator ("Answer: 18"), so a model is only credited when it
  states its answer in the trained form;
- flexible: the last number / choice letter / option anywhere, which forgives formatting slips.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

KINDS = ("number", "choice", "entity")

# A minus is a sign only when it does not follow a word or a closing bracket: in "16-3" it is an operator.
# Comma groups must be exact thousands ("1,000"), so "3,4" reads as two numbers, as in a list.
_NUMBER = r"(?:(?<![\w)\]])[-\u2212])?\d+(?:,\d{3}(?!\d))*(?:\.\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
_STRICT_NUMBER = re.compile(r"[\s$]*(" + _NUMBER + ")")
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+(?:,\d{3})*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_STRICT_CHOICE = re.compile(r"\s*(?:\(([A-E])\)|([A-E])(?![\w']))")
_FLEXIBLE_CHOICE = re.compile(r"\(([A-E])\)|\b([A-E])\b")
_PROSQA_OPTIONS = re.compile(r"\ba\s+(\w+)\s+or\s+(?:an?\s+)?(\w+)\s*\?\s*$", re.IGNORECASE)


def normalize_number(text: str) -> float | None:
    """The value of a number written as text ("1,000", "$18", "-3", "18.", "2.50"); None if it is not one."""
    if not isinstance(text, str):
        return None
    cleaned = text.strip().replace("\u2212", "-").replace("$", "").rstrip(".").strip()
    if not _PLAIN_NUMBER.fullmatch(cleaned):
        return None  # also keeps "nan"/"inf", which float() would accept, out
    value = float(cleaned.replace(",", ""))
    return value if math.isfinite(value) else None


def canonical_number(value: str | int | float) -> str | None:
    """The canonical text of a number: 18.0 -> "18", "1,000" -> "1000", 2.5 -> "2.5"; None if not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        plain = value.strip().replace(",", "")
        if re.fullmatch(r"[-+]?\d+", plain):  # exact, even beyond float precision
            return str(int(plain))
        value = normalize_number(value)
    if not isinstance(value, float) or not math.isfinite(value):
        return None
    # repr is the shortest string that reads back as the same float.
    return str(int(value)) if value.is_integer() else repr(value)


def _after_last(text: str, separator: str) -> str | None:
    """The text after the last occurrence of the separator; None if it does not occur."""
    if not separator or separator not in text:
        return None
    return text.rsplit(separator, 1)[1]


def extract_strict(text: str, separator: str = "Answer:") -> str | None:
    """The first number right after the last separator (spaces and '$' skipped); None if there is none."""
    tail = _after_last(text, separator)
    match = _STRICT_NUMBER.match(tail) if tail is not None else None
    return match.group(1) if match else None


def extract_flexible(text: str) -> str | None:
    """The last number anywhere in the text."""
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1] if numbers else None


def numbers_match(prediction: str | None, target: str | float, rel_tol: float = 1e-4,
                  abs_tol: float = 1e-6) -> bool:
    """Whether the prediction equals the target numerically, within math.isclose tolerances."""
    if prediction is None:
        return False
    predicted = normalize_number(prediction)
    expected = float(target) if isinstance(target, (int, float)) else normalize_number(target)
    if predicted is None or expected is None:
        return False
    return math.isclose(predicted, expected, rel_tol=rel_tol, abs_tol=abs_tol)


def extract_choice(text: str, separator: str = "Answer:") -> str | None:
    """The choice letter right after the last separator: "(B)", "B", "B) bank"; None otherwise."""
    tail = _after_last(text, separator)
    match = _STRICT_CHOICE.match(tail) if tail is not None else None
    return (match.group(1) or match.group(2)) if match else None


def extract_choice_flexible(text: str) -> str | None:
    """The last standalone capital A-E, or "(X)", anywhere in the text."""
    found = _FLEXIBLE_CHOICE.findall(text)
    return (found[-1][0] or found[-1][1]) if found else None


def prosqa_options(question: str) -> tuple[str, str] | None:
    """The two options of a ProsQA question ending "Is Sally a hilpus or sterpus?"; None if not of that form."""
    match = _PROSQA_OPTIONS.search(question.strip())
    return (match.group(1).lower(), match.group(2).lower()) if match else None


def _target_option(target_sentence: str) -> str:
    """The option a ProsQA answer sentence names: its last word without the period."""
    words = target_sentence.strip().rstrip(".").split()
    return words[-1].lower() if words else ""


def _names(text: str, word: str) -> bool:
    """Whether the text contains the word as a whole word ("impus" is not found in "yimpus")."""
    return re.search(rf"\b{re.escape(word)}\b", text, re.IGNORECASE) is not None


def prosqa_choice(prediction_text: str, question: str) -> str | None:
    """The one option of the question the prediction names; None if it names neither or both."""
    options = prosqa_options(question)
    if options is None:
        return None
    named = [option for option in options if _names(prediction_text, option)]
    return named[0] if len(named) == 1 else None


def prosqa_match(prediction_text: str, target_sentence: str, question: str) -> bool:
    """Whether the prediction names the target's option and not the other option of the question."""
    right = _target_option(target_sentence)
    if not right:
        return False
    if prosqa_options(question) is None:
        # Without the two options, "names the right one only" cannot be checked: ask for the whole sentence.
        wanted = " ".join(target_sentence.strip().rstrip(".").lower().split())
        return wanted in " ".join(prediction_text.lower().split())
    return prosqa_choice(prediction_text, question) == right


@dataclass(frozen=True)
class Score:
    """Strict and flexible correctness of one output, with what each reading extracted."""

    strict: bool
    flexible: bool
    strict_prediction: str | None
    flexible_prediction: str | None


def _entity_prediction(segment: str | None, question: str) -> str | None:
    """What to record as the entity prediction: the option named, else the stripped text."""
    if segment is None:
        return None
    return prosqa_choice(segment, question) or (segment.strip() or None)


def score_answer(kind: str, text: str, target: str, *, question: str = "",
                 separator: str = "Answer:") -> Score:
    """Score one model output against the target, for a benchmark of the given kind."""
    if kind == "number":
        strict, flexible = extract_strict(text, separator), extract_flexible(text)
        return Score(numbers_match(strict, target), numbers_match(flexible, target), strict, flexible)
    if kind == "choice":
        strict, flexible = extract_choice(text, separator), extract_choice_flexible(text)
        wanted = target.strip().upper()
        return Score(strict == wanted, flexible == wanted, strict, flexible)
    if kind == "entity":
        tail = _after_last(text, separator)
        return Score(tail is not None and prosqa_match(tail, target, question),
                     prosqa_match(text, target, question),
                     _entity_prediction(tail, question), _entity_prediction(text, question))
    raise ValueError(f"unknown answer kind {kind!r}; expected one of {', '.join(KINDS)}")
