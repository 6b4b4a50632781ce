"""Tests for dartlm.eval.benchmarks: every reader on small fixture files shaped like the real ones."""

from __future__ import annotations

import json
import sys
import types

import pytest

from dartlm.data.readers import DataError
from dartlm.eval.benchmarks import BENCHMARK_NAMES, BENCHMARKS, BenchmarkItem, load_benchmark

BAKERY = "A baker makes 16 rolls and sells 3, then 4. He sells the rest at $2 each. How much does he earn?"
OPENAI_ANSWER = "He has 16 - 3 - 4 = <<16-3-4=9>>9 rolls left.\nHe earns 9 * 2 = $<<9*2=18>>18.\n#### 18"


def write(tmp_path, name: str, text: str):
    """Write a fixture file and return its path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(tmp_path, name: str, records: list) -> str:
    """A JSONL fixture, one record per line."""
    return str(write(tmp_path, name, "".join(json.dumps(r) + "\n" for r in records)))


def json_list(tmp_path, name: str, records: list) -> str:
    """A pretty-printed JSON list fixture, so elements start on known lines."""
    return str(write(tmp_path, name, json.dumps(records, indent=4)))


def raises(message_start: str, *fragments: str, name: str, path=None, **kwargs) -> str:
    """load_benchmark must raise DataError starting with message_start and holding the fragments."""
    with pytest.raises(DataError) as excinfo:
        load_benchmark(name, path, **kwargs)
    message = str(excinfo.value)
    assert message.startswith(message_start), message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_names():
    assert BENCHMARK_NAMES == ("gsm8k", "gsm-hard", "svamp", "multiarith", "prosqa", "commonsenseqa")
    assert set(BENCHMARKS) == set(BENCHMARK_NAMES)
    raises("unknown benchmark 'gsm9k'", *BENCHMARK_NAMES, name="gsm9k", path="x.txt")


def test_gsm8k_both_formats_agree(tmp_path):
    txt = write(tmp_path, "test.txt", f"{BAKERY}||<<16-3-4=9>> <<9*2=18>> #### 18\n"
                                      "How many grams is 1 kg?|| #### 1,000\n"
                                      "What is 2 - 5?||<<2-5=-3>> #### -3\n")
    openai = jsonl(tmp_path, "test.jsonl", [
        {"question": BAKERY, "answer": OPENAI_ANSWER},
        {"question": "How many grams is 1 kg?", "answer": "A kilogram is a thousand grams.\n#### 1,000"},
        {"question": "What is 2 - 5?", "answer": "2 - 5 = <<2-5=-3>>-3\n#### -3"},
    ])
    from_txt, from_jsonl = load_benchmark("gsm8k", txt), load_benchmark("gsm8k", openai)
    assert from_txt == from_jsonl
    assert from_txt[0] == BenchmarkItem("gsm8k-test-0", BAKERY, "18", "number", ("<<16-3-4=9>>", "<<9*2=18>>"))
    assert [i.target for i in from_txt] == ["18", "1000", "-3"]  # thousands comma stripped
    assert from_txt[1].reference_steps == ()  # empty CoT


def test_gsm8k_errors(tmp_path):
    bad = jsonl(tmp_path, "test.jsonl", [{"question": "q", "answer": "1 #### 1"},
                                         {"question": "q", "answer": "1"}])
    raises(f"{bad}:2: field 'answer'", "####", name="gsm8k", path=bad)
    bad = jsonl(tmp_path, "valid.jsonl", [{"question": "q", "answer": "#### twelve"}])
    raises(f"{bad}:1: field 'answer' is not a number", "twelve", name="gsm8k", path=bad)
    bad = jsonl(tmp_path, "other.jsonl", [{"answer": "#### 1"}])
    raises(f"{bad}:1: field 'question' is missing", name="gsm8k", path=bad)
    bad = write(tmp_path, "broken.jsonl", '{"question": "q", "answer": "#### 1"}\n{"question": \n')
    raises(f"{bad}:2: invalid JSON", name="gsm8k", path=bad)
    bad = write(tmp_path, "test.txt", "q||<<1+1=2>> #### 2\nq2||<<1+1=2>> #### two\n")
    raises(f"{bad}:2: field 'answer' is not a number", name="gsm8k", path=bad)
    raises(f"{tmp_path}/test.csv: gsm8k cannot read a .csv file", "openai JSONL", name="gsm8k",
           path=tmp_path / "test.csv")
    raises(f"{tmp_path}/missing.jsonl: file does not exist", name="gsm8k", path=tmp_path / "missing.jsonl")


def test_gsm_hard(tmp_path):
    path = jsonl(tmp_path, "gsmhardv2.jsonl", [
        {"input": "Ducks lay 4933828 eggs. ", "code": "def solution():\n    return 0", "target": -9867630.0},
        {"input": "Split 3 cakes in 2.", "code": "", "target": 1.5},
        {"input": "Tiny?", "code": "", "target": 2.0107e-06},
        {"input": "Seven?", "code": "", "target": 7},
    ])
    items = load_benchmark("gsm-hard", path)
    assert [i.target for i in items] == ["-9867630", "1.5", "2.0107e-06", "7"]
    assert items[0] == BenchmarkItem("gsm-hard-v2-0", "Ducks lay 4933828 eggs.", "-9867630", "number")
    bad = jsonl(tmp_path, "hard.jsonl", [{"input": "q", "target": 1.0}, {"input": "q", "target": "18"}])
    raises(f"{bad}:2: field 'target' has the wrong type (str)", name="gsm-hard", path=bad)


def test_svamp(tmp_path):
    path = json_list(tmp_path, "SVAMP.json", [
        {"ID": "chal-1", "Body": " Each pack costs 76 dollars. ", "Question": "How much for 2 packs? ",
         "Equation": "( 76.0 * 2.0 )", "Answer": 152.0, "Type": "Multiplication"},
        {"ID": "chal-2", "Body": "Dan had $ 3.", "Question": "How much?", "Answer": 3.0},
    ])
    items = load_benchmark("svamp", path)
    question = "Each pack costs 76 dollars. How much for 2 packs?"  # Body + " " + Question, both stripped
    assert items[0] == BenchmarkItem("chal-1", question, "152", "number")
    assert [i.id for i in items] == ["chal-1", "chal-2"]
    # Pretty-printed: "[" on line 1, the first element on lines 2-7, the second from line 8.
    bad = json_list(tmp_path, "bad.json", [
        {"ID": "chal-1", "Body": "b", "Question": "q", "Answer": 1.0},
        {"ID": "chal-2", "Body": "b", "Question": "q"},
    ])
    raises(f"{bad}:8: field 'Answer' is missing", name="svamp", path=bad)
    dup = json_list(tmp_path, "dup.json", [{"ID": "x", "Body": "b", "Question": "q", "Answer": 1.0}] * 2)
    raises(f"{dup}:8: id 'x' repeats the id of {dup}:2", name="svamp", path=dup)
    not_list = write(tmp_path, "obj.json", '{"ID": "x"}')
    raises(f"{not_list}:1: expected a JSON list", name="svamp", path=not_list)


def test_multiarith(tmp_path):
    path = json_list(tmp_path, "MultiArith.json", [
        {"iIndex": 0, "lAlignments": [1, 2], "lEquations": ["X=((32.0+42.0)-35.0)"], "lSolutions": [39.0],
         "sQuestion": " Debby had 32 candies and her sister 42. They ate 35. How many are left? "},
        {"iIndex": 5, "lEquations": [], "lSolutions": [4.0], "sQuestion": "Four? "},
    ])
    items = load_benchmark("multiarith", path)
    assert items[0] == BenchmarkItem("multiarith-0", "Debby had 32 candies and her sister 42. They ate 35. "
                                     "How many are left?", "39", "number")
    assert items[1].id == "multiarith-5"
    bad = json_list(tmp_path, "bad.json", [{"iIndex": 0, "lSolutions": [1.0, 2.0], "sQuestion": "q"}])
    raises(f"{bad}:2: field 'lSolutions' must hold exactly one value", "got 2", name="multiarith", path=bad)
    bad = json_list(tmp_path, "empty.json", [{"iIndex": 0, "lSolutions": [], "sQuestion": "q"}])
    raises(f"{bad}:2: field 'lSolutions'", "got 0", name="multiarith", path=bad)


def test_prosqa(tmp_path):
    record = {"question": "Every gerpus is a terpus. Sally is a gerpus. Is Sally a terpus or lempus?",
              "answer": "Sally is a terpus.", "steps": ["Sally is a gerpus.", "Every gerpus is a terpus."],
              "idx_to_symbol": ["gerpus"], "edges": [[0, 1]], "root": 2, "target": 1, "neg_target": 3}
    path = write(tmp_path, "prosqa_test.json", json.dumps([record, record]))  # one line, as Coconut writes it
    items = load_benchmark("prosqa", path)
    assert items[0] == BenchmarkItem("prosqa-test-0", record["question"], "Sally is a terpus.", "entity",
                                     ("Sally is a gerpus.", "Every gerpus is a terpus."))
    assert items[1].id == "prosqa-test-1"
    bad = json_list(tmp_path, "prosqa_valid.json", [record, {**record, "steps": ["ok", 3]}])
    raises(f"{bad}:", "field 'steps' must be a list of strings", name="prosqa", path=bad)
    raises("prosqa: there is no hub copy", "--data-path", "prosqa_test.json", name="prosqa")


def test_commonsenseqa(tmp_path):
    labels = "ABCDE"
    texts = ["bank", "library", "department store", "mall", "new york"]
    record = {"answerKey": "A", "id": "1afa02", "question": {
        "question_concept": "revolving door", "stem": "A revolving door serves as a security measure at a what?",
        "choices": [{"label": l, "text": t} for l, t in zip(labels, texts)]}}
    path = jsonl(tmp_path, "dev_rand_split.jsonl", [record])
    [item] = load_benchmark("commonsenseqa", path)
    assert item == BenchmarkItem("1afa02", "A revolving door serves as a security measure at a what?\n"
                                 "Answer Choices: (A) bank (B) library (C) department store (D) mall (E) new york",
                                 "A", "choice")
    bad = jsonl(tmp_path, "bad.jsonl", [record, {**record, "id": "2", "answerKey": "F"}])
    raises(f"{bad}:2: field 'answerKey' 'F' is not one of the choice labels", name="commonsenseqa", path=bad)
    no_text = {**record, "question": {"stem": "s", "choices": [{"label": "A"}]}}
    bad = jsonl(tmp_path, "bad2.jsonl", [no_text])
    raises(f"{bad}:1: field 'question.choices[0].text' is missing", name="commonsenseqa", path=bad)


def test_limit_keeps_the_first_items(tmp_path):
    path = jsonl(tmp_path, "g.jsonl", [{"input": f"q{i}", "target": float(i)} for i in range(5)])
    assert [i.target for i in load_benchmark("gsm-hard", path, limit=3)] == ["0", "1", "2"]
    assert len(load_benchmark("gsm-hard", path, limit=50)) == 5
    assert load_benchmark("gsm-hard", path, limit=0) == []
    raises("gsm-hard: limit must be >= 0", name="gsm-hard", path=path, limit=-1)


def test_empty_file(tmp_path):
    path = write(tmp_path, "empty.jsonl", "\n\n")
    raises(f"{path}: no items found", name="commonsenseqa", path=path)


def test_hub_offline_asks_for_a_local_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = raises("gsm8k: no --data-path given", "HF_HUB_OFFLINE", "pass --data-path", "#### 18", name="gsm8k")
    assert "test.txt" in message


def test_hub_rows_are_converted(monkeypatch):
    """A stand-in `datasets` module: no network, but the hub row shapes are exercised."""
    calls = []
    rows = {
        ("ChilleD/SVAMP", "train"): [{"ID": "chal-1", "Body": "b1", "Question": "q1", "Answer": 1.0}],
        ("ChilleD/SVAMP", "test"): [{"ID": "chal-2", "Body": "b2", "Question": "q2", "Answer": 2.0}],
        ("ChilleD/MultiArith", "test"): [{"question": " Four? ", "final_ans": "4"}],
        ("tau/commonsense_qa", "validation"): [{"id": "c1", "question": "Where?", "question_concept": "x",
                                                "choices": {"label": ["A", "B"], "text": ["here", "there"]},
                                                "answerKey": "B"}],
    }

    def load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return rows[(name, split)]

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert [(i.id, i.question, i.target) for i in load_benchmark("svamp")] == [("chal-1", "b1 q1", "1"),
                                                                              ("chal-2", "b2 q2", "2")]
    assert load_benchmark("multiarith") == [BenchmarkItem("multiarith-test-0", "Four?", "4", "number")]
    [csqa] = load_benchmark("commonsenseqa")
    assert (csqa.question, csqa.target) == ("Where?\nAnswer Choices: (A) here (B) there", "B")
    assert calls == [("ChilleD/SVAMP", None, "train"), ("ChilleD/SVAMP", None, "test"),
                     ("ChilleD/MultiArith", None, "test"), ("tau/commonsense_qa", None, "validation")]
