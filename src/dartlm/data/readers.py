"""Readers turning iCoT text, JSONL and Coconut JSON files into lists of `Example`.

Every problem raises `DataError` whose message starts with "path:line: " and names the offending
field, so a bad record in a file of thousands can be found and fixed without guesswork.

Formats:
- icot (.txt): one `question||cot #### answer` per line; steps are the whitespace-separated CoT.
- jsonl (.jsonl): one object per line with `question`, `answer` (string or number) and either
  `cot` or `steps`. A `cot` string containing `<<...>>` annotations is split on whitespace exactly
  like an iCoT line; any other `cot` string gives one step per non-empty line.
- coconut (.json): a JSON list of `{"question", "steps", "answer"}` objects; other keys ignored.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Union

from dartlm.data.example import Example

log = logging.getLogger(__name__)

FORMATS = ("icot", "jsonl", "coconut")

_EXTENSIONS = {".txt": "icot", ".jsonl": "jsonl", ".json": "coconut"}
_ANNOTATION = re.compile(r"<<.*?>>", re.S)
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_JSON_WS = re.compile(r"[ \t\n\r]*")
_JSON_TYPES = {dict: "object", list: "list", str: "string", type(None): "null"}
_BOM = "\ufeff"
_ICOT_SHAPE = "(expected 'question||cot #### answer')"


class DataError(ValueError):
    """Bad input data; the message names file, line and field."""


_MAX_DIGITS = 4000  # Python refuses to convert longer integer strings (sys.get_int_max_str_digits)


class TooLongNumber:
    """A JSON integer too long to convert; the record that holds it is invalid (and only that record)."""

    def __init__(self, text: str):
        self.digits = len(text.lstrip("-"))


def _bounded_int(text: str):
    return int(text) if len(text) <= _MAX_DIGITS else TooLongNumber(text)


# Every JSON reader of the project decodes through this: an absurd integer becomes a value that the record checks
# refuse (one record, one line), instead of a ValueError that escapes --skip-invalid.
JSON_DECODER = json.JSONDecoder(parse_int=_bounded_int)


def loads(text: str, where: str):
    """One JSON value, or DataError naming where (also for nesting too deep for the parser)."""
    try:
        return JSON_DECODER.decode(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise DataError(f"{where}: invalid JSON: nested too deeply") from None


@dataclass
class ReadReport:
    """What one `read_examples` call returned and which invalid records it skipped."""

    path: str
    read: int = 0
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One human line: examples read, plus how many records were skipped and the first error."""
        text = f"{self.path}: {_plural(self.read, 'example')} read"
        if self.skipped:
            text += f", {self.skipped_summary()}"
        return text

    def skipped_summary(self) -> str:
        """'2 invalid records skipped (first: ...)'."""
        return (f"{_plural(len(self.skipped), 'invalid record')} skipped"
                f" (first: {self.skipped[0]})")


def _plural(n: int, noun: str) -> str:
    """'1 example' / '3 examples'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# A record either parses into an Example or carries its own error, so skip_invalid can decide.
Outcome = Union[Example, DataError]


def detect_format(path: str | os.PathLike) -> str:
    """The format implied by the file extension; DataError for unknown extensions."""
    name = os.fspath(path)
    ext = os.path.splitext(name)[1].lower()
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    known = ", ".join(f"{e} ({f})" for e, f in _EXTENSIONS.items())
    raise DataError(f"{name}: cannot tell the data format from the extension {ext or '(none)'!r};"
                    f" known extensions: {known}; pass format= explicitly"
                    f" (one of {', '.join(FORMATS)})")


def read_examples(path: str | os.PathLike, format: str = "auto", *, omit_last_step: bool = False,
                  skip_invalid: bool = False, answer_must_be_numeric: bool = False,
                  report: ReadReport | None = None) -> list[Example]:
    """Every example of a data file; bad records raise DataError, or are skipped if asked."""
    name = os.fspath(path)
    if format != "auto" and format not in FORMATS:
        raise DataError(f"{name}: unknown format {format!r}; expected 'auto' or one of"
                        f" {', '.join(FORMATS)}")
    fmt = detect_format(name) if format == "auto" else format
    data = _read_bytes(name)
    # The caller's report is filled in place so it can inspect what was skipped.
    report = report if report is not None else ReadReport(name)
    report.path = name
    examples: list[Example] = []
    for outcome in _READERS[fmt](name, data):
        if isinstance(outcome, Example) and answer_must_be_numeric:
            outcome = _check_numeric(outcome)
        if isinstance(outcome, DataError):
            if not skip_invalid:
                raise outcome
            report.skipped.append(str(outcome))
            continue
        examples.append(outcome.without_last_step() if omit_last_step else outcome)
    report.read = len(examples)
    if report.skipped:
        log.warning(report.summary())
    if not examples:
        detail = f"; {report.skipped_summary()}" if report.skipped else ""
        raise DataError(f"{name}: no examples found{detail}")
    return examples


def _read_bytes(name: str) -> bytes:
    """The raw file contents; decoding happens later so errors can point at a line."""
    try:
        with open(name, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError(f"{name}: file does not exist") from None
    except IsADirectoryError:
        raise DataError(f"{name}: is a directory, not a data file") from None
    if not data.removeprefix(_BOM.encode()).strip():
        raise DataError(f"{name}: file is empty")
    return data


def _decode(data: bytes, name: str, first_line: int) -> str:
    """UTF-8 text of `data`, whose first byte sits on `first_line`; errors give line and column."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + data.count(b"\n", 0, e.start)
        column = e.start - data.rfind(b"\n", 0, e.start)  # rfind gives -1 on the first line
        raise DataError(f"{name}:{line}: not valid UTF-8"
                        f" (byte 0x{data[e.start]:02x} at column {column})") from None


def _outcome(parse: Callable[..., Example], *args: Any, **kwargs: Any) -> Outcome:
    """Run a record parser, turning its DataError into a value."""
    try:
        return parse(*args, **kwargs)
    except DataError as e:
        return e


def _text_records(name: str, data: bytes,
                  parse: Callable[[str, str], Example]) -> Iterator[Outcome]:
    """Parse each non-blank line; a bad line (even bad UTF-8) only spoils its own record."""
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = _decode(raw, name, number).removeprefix(_BOM if number == 1 else "")
        except DataError as e:
            yield e
            continue
        if text.strip():  # blank lines, including the usual trailing newline, are not records
            yield _outcome(parse, text, f"{name}:{number}")


def _parse_icot(text: str, where: str) -> Example:
    """One `question||cot #### answer` line."""
    if "||" not in text:
        raise DataError(f"{where}: missing the question separator '||' {_ICOT_SHAPE}")
    question, rest = text.split("||", 1)
    if "####" not in rest:
        raise DataError(f"{where}: missing the answer separator '####' {_ICOT_SHAPE}")
    cot, answer = rest.rsplit("####", 1)
    return _example(where, question, tuple(cot.split()), answer)


def _parse_jsonl(text: str, where: str) -> Example:
    """One JSON object line."""
    return _from_object(loads(text, where), where, allow_cot=True)


def _read_coconut(name: str, data: bytes) -> Iterator[Outcome]:
    """Walk the top-level list element by element so each record knows its starting line."""
    text = _decode(data, name, 1).removeprefix(_BOM)
    decoder = JSON_DECODER
    pos = _skip_ws(text, 0)
    if not text.startswith("[", pos):
        value, _ = _raw_decode(decoder, text, pos, name)
        raise DataError(f"{name}:{_line(text, pos)}: expected a JSON list of examples,"
                        f" got {_type(value)}")
    pos = _skip_ws(text, pos + 1)
    while not text.startswith("]", pos):
        value, end = _raw_decode(decoder, text, pos, name)
        yield _outcome(_from_object, value, f"{name}:{_line(text, pos)}", allow_cot=False)
        pos = _skip_ws(text, end)
        if text.startswith(",", pos):  # a trailing comma then fails in _raw_decode, as JSON says
            pos = _skip_ws(text, pos + 1)
        elif not text.startswith("]", pos):
            raise DataError(f"{name}:{_line(text, pos)}: invalid JSON: expected ',' or ']'"
                            " after a list element")
    end = _skip_ws(text, pos + 1)
    if end != len(text):
        raise DataError(f"{name}:{_line(text, end)}: invalid JSON: unexpected data after the list")


def _raw_decode(decoder: json.JSONDecoder, text: str, pos: int, name: str) -> tuple[Any, int]:
    """Decode one JSON value at `pos`; a syntax error is fatal since the rest cannot be resynced."""
    try:
        return decoder.raw_decode(text, pos)
    except json.JSONDecodeError as e:
        raise DataError(f"{name}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise DataError(f"{name}:{_line(text, pos)}: invalid JSON: nested too deeply") from None


def _skip_ws(text: str, pos: int) -> int:
    """Index of the first non-JSON-whitespace character at or after `pos`."""
    return _JSON_WS.match(text, pos).end()


def _line(text: str, pos: int) -> int:
    """1-based line number of character offset `pos`."""
    return text.count("\n", 0, pos) + 1


def _from_object(obj: Any, where: str, *, allow_cot: bool) -> Example:
    """An Example from a decoded JSON object (JSONL line or Coconut list element)."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {_type(obj)}")
    question = _string(obj, "question", where)
    answer = _answer(obj, where)
    return _example(where, question, _steps(obj, where, allow_cot=allow_cot), answer)


def _require(obj: dict, key: str, where: str) -> Any:
    """obj[key], or DataError naming the missing field."""
    if key not in obj:
        raise DataError(f"{where}: field {key!r} is missing")
    return obj[key]


def _string(obj: dict, key: str, where: str) -> str:
    """obj[key], which must be a string."""
    if not isinstance(value := _require(obj, key, where), str):
        raise DataError(f"{where}: field {key!r} must be a string, got {_type(value)}")
    return value


def _answer(obj: dict, where: str) -> str:
    """The answer as a string; JSON numbers get a canonical form (18.0 -> '18', 2.5 -> '2.5')."""
    value = _require(obj, "answer", where)
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    raise DataError(f"{where}: field 'answer' must be a string or a number, got {_type(value)}")


def _steps(obj: dict, where: str, *, allow_cot: bool) -> tuple[str, ...]:
    """Steps from `steps` (list of strings) or, where allowed, from a `cot` string."""
    has_cot, has_steps = allow_cot and "cot" in obj, "steps" in obj
    if has_cot and has_steps:
        raise DataError(f"{where}: fields 'cot' and 'steps' are both present; give only one")
    if has_cot:
        return _split_cot(_string(obj, "cot", where))
    if not has_steps:
        expected = ("expected 'cot' (string) or 'steps' (list of strings)" if allow_cot
                    else "expected a list of strings")
        raise DataError(f"{where}: field 'steps' is missing ({expected})")
    steps = obj["steps"]
    if not isinstance(steps, list):
        raise DataError(f"{where}: field 'steps' must be a list of strings, got {_type(steps)}")
    for i, step in enumerate(steps):
        if not isinstance(step, str):
            raise DataError(f"{where}: field 'steps' must be a list of strings,"
                            f" got {_type(step)} at index {i}")
        if not step.strip():  # an empty step would silently change the CoT layout
            raise DataError(f"{where}: field 'steps' has an empty step at index {i}")
    return tuple(step.strip() for step in steps)


def _split_cot(cot: str) -> tuple[str, ...]:
    """Annotated CoTs split on whitespace like iCoT lines; free text gives one step per line."""
    if _ANNOTATION.search(cot):
        return tuple(cot.split())
    return tuple(line.strip() for line in cot.split("\n") if line.strip())


def _example(where: str, question: str, steps: tuple[str, ...], answer: str) -> Example:
    """A validated Example with stripped question and answer."""
    question, answer = question.strip(), answer.strip()
    if not question:
        raise DataError(f"{where}: field 'question' is empty")
    if not answer:
        raise DataError(f"{where}: field 'answer' is empty")
    return Example(question, steps, answer, origin=where)


def _check_numeric(example: Example) -> Outcome:
    """The example itself if its answer is a finite number (thousands commas allowed)."""
    answer = example.answer
    plain = answer.replace(",", "") if _THOUSANDS.fullmatch(answer) else answer
    try:
        ok = math.isfinite(float(plain))
    except ValueError:
        ok = False
    if ok:
        return example
    return DataError(f"{example.origin}: field 'answer' is not a number: '{answer}'")


def _type(value: Any) -> str:
    """JSON-flavoured type name for error messages."""
    if isinstance(value, TooLongNumber):
        return f"an integer of {value.digits} digits (too long)"
    return _JSON_TYPES.get(type(value), type(value).__name__)


_READERS: dict[str, Callable[[str, bytes], Iterator[Outcome]]] = {
    "icot": lambda name, data: _text_records(name, data, _parse_icot),
    "jsonl": lambda name, data: _text_records(name, data, _parse_jsonl),
    "coconut": _read_coconut,
}
