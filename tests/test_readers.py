"""Tests for dartlm.data.readers: the three formats, their options and their error messages."""

from __future__ import annotations

import json
import logging
import re

import pytest

from dartlm.data.example import Example
from dartlm.data.readers import FORMATS, DataError, ReadReport, detect_format, read_examples

DUCKS = ("Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes "
         "muffins for her friends every day with four. She sells the remainder at the farmers' "
         "market daily for $2 per fresh duck egg. How much in dollars does she make every day at "
         "the farmers' market?")


def write(tmp_path, name: str, content: str | bytes):
    """Write a fixture file and return its path."""
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def raises_at(path, line: int | None, *fragments: str, **kwargs) -> str:
    """Read `path`, expect DataError, check it starts with 'path:line: ' and holds the fragments."""
    with pytest.raises(DataError) as excinfo:
        read_examples(path, **kwargs)
    message = str(excinfo.value)
    prefix = f"{path}:{line}: " if line is not None else f"{path}: "
    assert message.startswith(prefix), message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---------------------------------------------------------------- iCoT text

def test_icot_happy_path(tmp_path):
    path = write(tmp_path, "train.txt",
                 f"{DUCKS}||<<16-3-4=9>> <<9*2=18>> #### 18\n"
                 "\n"
                 "Natalia sold clips to 48 friends.|| #### 26\n"
                 "How many grams?||<<10*100=1000>> #### 1,000\n"
                 "   \n"
                 "What is 2 - 5?||<<2-5=-3>> #### -3\n")
    examples = read_examples(path)
    assert [e.answer for e in examples] == ["18", "26", "1,000", "-3"]
    assert examples[0] == Example(DUCKS, ("<<16-3-4=9>>", "<<9*2=18>>"), "18", f"{path}:1")
    assert examples[1].steps == ()  # empty CoT is valid
    assert examples[1].question == "Natalia sold clips to 48 friends."
    # Blank lines are skipped but still counted for line numbers.
    assert [e.origin for e in examples] == [f"{path}:{n}" for n in (1, 3, 4, 6)]


def test_icot_splits_on_first_bars_and_last_hashes(tmp_path):
    path = write(tmp_path, "t.txt", "Is #### a symbol?||<<1+1=2>> a||b #### 2\n")
    (example,) = read_examples(path)
    assert example.question == "Is #### a symbol?"
    assert example.steps == ("<<1+1=2>>", "a||b")
    assert example.answer == "2"


def test_icot_crlf_and_bom(tmp_path):
    path = write(tmp_path, "t.txt", "\ufeffq1||<<1+1=2>> #### 2\r\nq2|| #### 3\r\n".encode())
    examples = read_examples(path)
    assert [(e.question, e.answer) for e in examples] == [("q1", "2"), ("q2", "3")]


def test_explicit_format_overrides_extension(tmp_path):
    path = write(tmp_path, "data.dat", "q|| #### 1\n")
    assert read_examples(path, format="icot")[0].answer == "1"


@pytest.mark.parametrize("line, message", [
    ("q||<<1+1=2>> 2",
     "missing the answer separator '####' (expected 'question||cot #### answer')"),
    ("q <<1+1=2>> #### 2", "missing the question separator '||'"),
    ("   ||<<1+1=2>> #### 2", "field 'question' is empty"),
    ("q||<<1+1=2>> ####   ", "field 'answer' is empty"),
])
def test_icot_record_errors_name_line_and_field(tmp_path, line, message):
    path = write(tmp_path, "train.txt", f"a|| #### 1\nb|| #### 2\n{line}\nc|| #### 3\n")
    raises_at(path, 3, message)


# ---------------------------------------------------------------- JSONL

def test_jsonl_happy_path(tmp_path):
    records = [
        {"question": "q1", "cot": "<<16-3-4=9>> <<9*2=18>>", "answer": 18.0},
        {"question": "q2", "steps": ["First.", "Then."], "answer": "2.5", "extra": [1]},
        {"question": "q3", "cot": "Tom is a cat.\n\nEvery cat is a mammal.\n", "answer": 2.5},
        {"question": "q4", "cot": "", "answer": 7},
    ]
    path = write(tmp_path, "x.jsonl", "\n".join(json.dumps(r) for r in records) + "\n\n")
    examples = read_examples(path)
    assert examples[0].steps == ("<<16-3-4=9>>", "<<9*2=18>>")
    assert examples[0].answer == "18"
    assert examples[1].steps == ("First.", "Then.")
    assert examples[2].steps == ("Tom is a cat.", "Every cat is a mammal.")
    assert examples[2].answer == "2.5"
    assert examples[3].steps == () and examples[3].answer == "7"
    assert [e.origin for e in examples] == [f"{path}:{n}" for n in (1, 2, 3, 4)]


@pytest.mark.parametrize("record, fragments", [
    ('{"question": "q", "cot": "x", "answer": ', ["invalid JSON: "]),
    ('{"question": 5, "cot": "x", "answer": "1"}', ["field 'question' must be a string, got int"]),
    ('{"question": "q", "answer": "1"}',
     ["field 'steps'", "expected 'cot' (string) or 'steps' (list of strings)"]),
    ('{"question": "q", "cot": "a", "steps": ["a"], "answer": "1"}', ["'cot'", "'steps'", "both"]),
    ('{"question": "q", "steps": ["a", 3], "answer": "1"}',
     ["field 'steps' must be a list of strings"]),
    ('{"question": "q", "steps": "a b", "answer": "1"}',
     ["field 'steps' must be a list of strings, got string"]),
    ('{"question": "q", "cot": ["a"], "answer": "1"}', ["field 'cot' must be a string, got list"]),
    ('{"question": "q", "cot": "a"}', ["field 'answer' is missing"]),
    ('{"question": "q", "cot": "a", "answer": true}', ["field 'answer'", "got bool"]),
    ('{"cot": "a", "answer": "1"}', ["field 'question' is missing"]),
    ('{"question": "q", "cot": "a", "answer": " "}', ["field 'answer' is empty"]),
    ('["q", "a", "1"]', ["expected a JSON object, got list"]),
])
def test_jsonl_record_errors_name_line_and_field(tmp_path, record, fragments):
    good = '{"question": "ok", "cot": "<<1=1>>", "answer": "1"}'
    path = write(tmp_path, "x.jsonl", f"{good}\n{record}\n{good}\n")
    raises_at(path, 2, *fragments)


# ---------------------------------------------------------------- Coconut JSON

COCONUT = """[
  {
    "question": "Every wumpus is a cat. Is Tom a cat?",
    "steps": ["Tom is a wumpus.", "Every wumpus is a cat."],
    "answer": "Tom is a cat.",
    "idx_to_symbol": ["a", "b"],
    "edges": [[0, 1]]
  },
  {"question": "2+2?", "steps": ["<<2+2=4>>"], "answer": "4"}
]
"""


def test_coconut_happy_path_ignores_extra_fields(tmp_path):
    path = write(tmp_path, "x.json", COCONUT)
    examples = read_examples(path)
    assert examples[0] == Example("Every wumpus is a cat. Is Tom a cat?",
                                  ("Tom is a wumpus.", "Every wumpus is a cat."),
                                  "Tom is a cat.", f"{path}:2")
    assert examples[1].steps == ("<<2+2=4>>",)
    assert examples[1].origin == f"{path}:9"


def test_coconut_element_errors_name_start_line(tmp_path):
    text = COCONUT.replace('"steps": ["<<2+2=4>>"]', '"steps": "<<2+2=4>>"')
    raises_at(write(tmp_path, "x.json", text), 9, "field 'steps' must be a list of strings")
    text = COCONUT.replace('"question": "2+2?", ', "")
    raises_at(write(tmp_path, "y.json", text), 9, "field 'question' is missing")
    raises_at(write(tmp_path, "z.json", '[\n\n  "just a string"\n]'), 3,
              "expected a JSON object, got string")


def test_coconut_cot_key_is_not_a_substitute_for_steps(tmp_path):
    path = write(tmp_path, "x.json", '[{"question": "q", "cot": "<<1=1>>", "answer": "1"}]')
    raises_at(path, 1, "field 'steps' is missing")


@pytest.mark.parametrize("text, line, fragment", [
    ('{"question": "q"}', 1, "expected a JSON list of examples, got object"),
    ('\n\n"hello"', 3, "expected a JSON list of examples, got string"),
    ('[\n{"question": "q", "steps": [], "answer": "1"}\n{"question": "r"}\n]', 3,
     "invalid JSON: expected ',' or ']'"),
    ('[\n{"question": "q",\n "steps": [,], "answer": "1"}\n]', 3, "invalid JSON: "),
    ('[{"question": "q", "steps": [], "answer": "1"}]\n\nextra', 3, "unexpected data after"),
    ('[{"question": "q", "steps": [], "answer": "1"}', 1, "expected ',' or ']'"),
])
def test_coconut_structural_errors_are_fatal(tmp_path, text, line, fragment):
    path = write(tmp_path, "x.json", text)
    raises_at(path, line, fragment, skip_invalid=True)


def test_coconut_empty_list_has_no_examples(tmp_path):
    raises_at(write(tmp_path, "x.json", " [ ] \n"), None, "no examples found")


# ---------------------------------------------------------------- bad bytes, files, formats

def test_icot_bad_utf8_names_line_and_column(tmp_path):
    data = b"".join(b"%d|| #### %d\n" % (n, n) for n in range(1, 7)) + b"question!!\xff|| #### 7\n"
    path = write(tmp_path, "x.txt", data)
    raises_at(path, 7, "not valid UTF-8 (byte 0xff at column 11)")
    # In a line-based file a bad line is just a bad record.
    report = ReadReport(str(path))
    assert len(read_examples(path, skip_invalid=True, report=report)) == 6
    assert "x.txt:7: not valid UTF-8" in report.skipped[0]


def test_coconut_bad_utf8_is_fatal_and_located(tmp_path):
    data = COCONUT.encode().replace(b"Tom is a cat.", b"Tom is a c\xe9t.")
    path = write(tmp_path, "x.json", data)
    raises_at(path, 5, "not valid UTF-8 (byte 0xe9 at column 26)", skip_invalid=True)


@pytest.mark.parametrize("name, content", [("x.txt", ""), ("x.jsonl", "\n  \n"), ("x.json", "")])
def test_empty_file(tmp_path, name, content):
    raises_at(write(tmp_path, name, content), None, "file is empty", skip_invalid=True)


def test_missing_file(tmp_path):
    raises_at(tmp_path / "nope.txt", None, "does not exist")


def test_unknown_format_lists_formats(tmp_path):
    path = write(tmp_path, "x.txt", "q|| #### 1\n")
    message = raises_at(path, None, "unknown format 'csv'", format="csv")
    assert all(f in message for f in FORMATS)


def test_detect_format(tmp_path):
    assert detect_format("a/train.txt") == "icot"
    assert detect_format(tmp_path / "B.JSONL") == "jsonl"
    assert detect_format("c.json") == "coconut"
    with pytest.raises(DataError, match=r"data\.csv: .*\.txt.*\.jsonl.*\.json.*format="):
        detect_format("data.csv")
    with pytest.raises(DataError, match="format="):
        read_examples(write(tmp_path, "train", "q|| #### 1\n"))


# ---------------------------------------------------------------- options

def test_omit_last_step(tmp_path):
    path = write(tmp_path, "x.txt", "q1||<<1+1=2>> <<2*3=6>> #### 6\nq2|| #### 5\n")
    examples = read_examples(path, omit_last_step=True)
    assert examples[0].steps == ("<<1+1=2>>",)
    assert examples[1].steps == ()
    assert examples[0].origin == f"{path}:1"


def test_skip_invalid_counts_and_logs(tmp_path, caplog):
    path = write(tmp_path, "train.txt",
                 "a|| #### 1\nbad line\nb|| #### 2\nc||<<1=1>>\nd|| #### 4\n")
    report = ReadReport(str(path))
    with caplog.at_level(logging.WARNING, logger="dartlm.data.readers"):
        examples = read_examples(path, skip_invalid=True, report=report)
    assert [e.answer for e in examples] == ["1", "2", "4"]
    assert report.read == 3
    assert len(report.skipped) == 2
    assert report.skipped[0].startswith(f"{path}:2: missing the question separator")
    assert report.skipped[1].startswith(f"{path}:4: missing the answer separator")
    summary = report.summary()
    assert summary.startswith(
        f"{path}: 3 examples read, 2 invalid records skipped (first: {path}:2:")
    assert summary in caplog.text


def test_skip_invalid_without_report_still_warns(tmp_path, caplog):
    path = write(tmp_path, "x.jsonl", '{"question": "q", "cot": "", "answer": "1"}\n{oops}\n')
    with caplog.at_level(logging.WARNING, logger="dartlm.data.readers"):
        assert len(read_examples(path, skip_invalid=True)) == 1
    expected = r"1 example read, 1 invalid record skipped \(first: .*x\.jsonl:2: invalid JSON"
    assert re.search(expected, caplog.text)


def test_nothing_skipped_means_no_warning(tmp_path, caplog):
    path = write(tmp_path, "x.txt", "a|| #### 1\n")
    report = ReadReport("ignored")
    with caplog.at_level(logging.WARNING, logger="dartlm.data.readers"):
        read_examples(path, skip_invalid=True, report=report)
    assert caplog.records == []
    assert report.summary() == f"{path}: 1 example read"


def test_all_records_invalid_is_an_error(tmp_path):
    path = write(tmp_path, "x.txt", "bad\nworse\n")
    raises_at(path, None, "no examples found", "2 invalid records skipped", f"{path}:1:",
              skip_invalid=True)


def test_numeric_answers_are_not_checked_by_default(tmp_path):
    path = write(tmp_path, "x.txt", "Is Tom a cat?|| #### Tom is a cat.\n")
    assert read_examples(path)[0].answer == "Tom is a cat."


def test_answer_must_be_numeric(tmp_path):
    good = write(tmp_path, "good.txt",
                 "a|| #### 1,000\nb|| #### -3\nc|| #### 2.5\nd|| #### 1,234,567.5\n")
    assert len(read_examples(good, answer_must_be_numeric=True)) == 4
    for n, answer in enumerate(["Tom is a cat.", "1,00", "nan"], start=2):
        bad = write(tmp_path, f"bad{n}.txt", "\n" * (n - 1) + f"q|| #### {answer}\n")
        raises_at(bad, n, f"field 'answer' is not a number: '{answer}'",
                  answer_must_be_numeric=True)


def test_numeric_check_respects_skip_invalid(tmp_path):
    path = write(tmp_path, "x.jsonl", '{"question": "q", "steps": [], "answer": 4.0}\n'
                                      '{"question": "r", "steps": [], "answer": "four"}\n')
    report = ReadReport(str(path))
    examples = read_examples(path, answer_must_be_numeric=True, skip_invalid=True, report=report)
    assert [e.answer for e in examples] == ["4"]
    assert report.skipped == [f"{path}:2: field 'answer' is not a number: 'four'"]
