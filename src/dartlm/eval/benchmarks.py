"""Readers for the evaluation sets: GSM8K, GSM-HARD, SVAMP, MultiArith, ProsQA and CommonsenseQA.

Each reader turns a local file (or, for online users, the Hugging Face hub copy) into `BenchmarkItem`s with a
canonical target. A malformed record raises `DataError` naming file, line and field, like the training readers.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from dartlm.data.readers import JSON_DECODER, DataError, loads, read_examples
from dartlm.eval.answers import canonical_number

_ANNOTATION = re.compile(r"<<.*?>>", re.S)
_BETWEEN = re.compile(r"[\s,]*")  # what separates list elements in a file already known to be valid JSON
_TRUE = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class BenchmarkItem:
    """One evaluation question with its canonical target."""

    id: str
    question: str
    target: str
    kind: str
    reference_steps: tuple[str, ...] = ()


# A converter turns one decoded record into an item: (record, "path:line", index, id tag) -> item.
Converter = Callable[[Any, str, int, str], BenchmarkItem]


@dataclass(frozen=True)
class BenchmarkSpec:
    """How to read one benchmark locally and, where one exists, from the hub."""

    name: str
    kind: str
    container: str  # "jsonl" or "json-list"; gsm8k also takes iCoT text
    convert: Converter
    expected: str  # the local file users should pass, for error messages
    hub: tuple[str, str | None, tuple[str, ...]] | None = None  # (dataset, config, splits)
    from_hub: Callable[[dict], dict] = dict  # reshapes a hub row into the local record shape


def _field(obj: Any, key: str, where: str, kind: type | tuple[type, ...] = str, parent: str = "") -> Any:
    """obj[key], checked for presence and type; a string must not be blank. `parent` prefixes nested names."""
    name = f"'{parent}{key}'"
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object for field {name}, got {type(obj).__name__}")
    if key not in obj:
        raise DataError(f"{where}: field {name} is missing")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{where}: field {name} has the wrong type ({type(value).__name__})")
    if isinstance(value, str) and not value.strip():
        raise DataError(f"{where}: field {name} is empty")
    return value


def _number(value: Any, where: str, key: str) -> str:
    """The canonical text of a numeric field value."""
    if (text := canonical_number(value) if isinstance(value, (str, int, float)) else None) is None:
        raise DataError(f"{where}: field {key!r} is not a number: {value!r}")
    return text


def _gsm8k(obj: Any, where: str, index: int, tag: str) -> BenchmarkItem:
    """An openai GSM8K record: the target follows the last '####', the steps are the <<...>> annotations."""
    answer = _field(obj, "answer", where)
    if "####" not in answer:
        raise DataError(f"{where}: field 'answer' has no '####' before the final answer")
    target = _number(answer.rsplit("####", 1)[1], where, "answer")
    steps = tuple(_ANNOTATION.findall(answer))
    return BenchmarkItem(f"gsm8k-{tag}{index}", _field(obj, "question", where).strip(), target, "number", steps)


def _gsm_hard(obj: Any, where: str, index: int, tag: str) -> BenchmarkItem:
    """A PAL GSM-HARD record {"input", "code", "target": float}."""
    target = _number(_field(obj, "target", where, (int, float)), where, "target")
    return BenchmarkItem(f"gsm-hard-{tag}{index}", _field(obj, "input", where).strip(), target, "number")


def _svamp(obj: Any, where: str, index: int, tag: str) -> BenchmarkItem:
    """A SVAMP record: the question is Body + " " + Question."""
    question = f"{_field(obj, 'Body', where).strip()} {_field(obj, 'Question', where).strip()}"
    target = _number(_field(obj, "Answer", where, (int, float, str)), where, "Answer")
    return BenchmarkItem(_field(obj, "ID", where).strip(), question, target, "number")


def _multiarith(obj: Any, where: str, index: int, tag: str) -> BenchmarkItem:
    """A MultiArith record: sQuestion (padded with spaces) and exactly one value in lSolutions."""
    solutions = _field(obj, "lSolutions", where, list)
    if len(solutions) != 1:
        raise DataError(f"{where}: field 'lSolutions' must hold exactly one value, got {len(solutions)}")
    item_id = f"multiarith-{_field(obj, 'iIndex', where, int)}" if "iIndex" in obj else f"multiarith-{tag}{index}"
    return BenchmarkItem(item_id, _field(obj, "sQuestion", where).strip(),
                         _number(solutions[0], where, "lSolutions"), "number")


def _prosqa(obj: Any, where: str, index: int, tag: str) -> BenchmarkItem:
    """A Coconut ProsQA record: the target is the answer sentence, the steps are the proof sentences."""
    steps = _field(obj, "steps", where, list)
    if not all(isinstance(step, str) for step in steps):
        raise DataError(f"{where}: field 'steps' must be a list of strings")
    return BenchmarkItem(f"prosqa-{tag}{index}", _field(obj, "question", where).strip(),
                         _field(obj, "answer", where).strip(), "entity", tuple(s.strip() for s in steps))


def _commonsenseqa(obj: Any, where: str, index: int, tag: str) -> BenchmarkItem:
    """A CommonsenseQA record; the choices are appended to the stem as "(A) text (B) text ..."."""
    body = _field(obj, "question", where, dict)
    labels, parts = [], []
    for i, choice in enumerate(_field(body, "choices", where, list, "question.")):
        label = _field(choice, "label", where, parent=f"question.choices[{i}].").strip()
        labels.append(label)
        parts.append(f"({label}) {_field(choice, 'text', where, parent=f'question.choices[{i}].').strip()}")
    answer = _field(obj, "answerKey", where).strip()
    if answer not in labels:
        raise DataError(f"{where}: field 'answerKey' {answer!r} is not one of the choice labels {labels}")
    question = f"{_field(body, 'stem', where, parent='question.').strip()}\nAnswer Choices: {' '.join(parts)}"
    return BenchmarkItem(_field(obj, "id", where).strip(), question, answer, "choice")


def _csqa_from_hub(row: dict) -> dict:
    """tau/commonsense_qa keeps the choices as parallel lists and the stem as 'question'."""
    choices = row.get("choices") or {}
    pairs = zip(choices.get("label", []), choices.get("text", []))
    return {"id": row.get("id"), "answerKey": row.get("answerKey"),
            "question": {"stem": row.get("question"), "choices": [{"label": l, "text": t} for l, t in pairs]}}


BENCHMARKS: dict[str, BenchmarkSpec] = {spec.name: spec for spec in (
    BenchmarkSpec("gsm8k", "number", "jsonl", _gsm8k,
                  "GSM8K test as iCoT text (test.txt: 'question||<<a>> <<b>> #### answer') or openai JSONL"
                  " (test.jsonl: {\"question\", \"answer\": \"... #### 18\"})",
                  ("openai/gsm8k", "main", ("test",))),
    BenchmarkSpec("gsm-hard", "number", "jsonl", _gsm_hard,
                  "PAL's gsmhardv2.jsonl ({\"input\", \"code\", \"target\": float} per line)",
                  ("reasoning-machines/gsm-hard", None, ("train",))),
    BenchmarkSpec("svamp", "number", "json-list", _svamp,
                  "SVAMP.json (a JSON list of {\"ID\", \"Body\", \"Question\", \"Answer\"})",
                  ("ChilleD/SVAMP", None, ("train", "test"))),
    BenchmarkSpec("multiarith", "number", "json-list", _multiarith,
                  "MultiArith.json (a JSON list of {\"iIndex\", \"sQuestion\", \"lSolutions\": [x]})",
                  ("ChilleD/MultiArith", None, ("test",)),
                  lambda row: {"sQuestion": row.get("question"), "lSolutions": [row.get("final_ans")]}),
    BenchmarkSpec("prosqa", "entity", "json-list", _prosqa,
                  "Coconut's prosqa_test.json (a JSON list of {\"question\", \"answer\", \"steps\"})"),
    BenchmarkSpec("commonsenseqa", "choice", "jsonl", _commonsenseqa,
                  "CommonsenseQA dev_rand_split.jsonl ({\"answerKey\", \"id\", \"question\": {\"stem\","
                  " \"choices\"}} per line)",
                  ("tau/commonsense_qa", None, ("validation",)), _csqa_from_hub),
)}
BENCHMARK_NAMES = tuple(BENCHMARKS)


def _read_text(path: str) -> str:
    """The file's UTF-8 text (a BOM is dropped)."""
    try:
        return Path(path).read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: file does not exist") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a data file") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 (byte offset {e.start})") from None


def _jsonl_records(path: str) -> Iterator[tuple[Any, str]]:
    """(record, "path:line") for every non-blank line."""
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if line.strip():
            yield loads(line, f"{path}:{number}"), f"{path}:{number}"


def _json_list_records(path: str) -> Iterator[tuple[Any, str]]:
    """(element, "path:line") for a JSON list, each element located by the line it starts on."""
    text = _read_text(path)
    try:
        data = JSON_DECODER.decode(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise DataError(f"{path}: invalid JSON: nested too deeply") from None
    if not isinstance(data, list):
        raise DataError(f"{path}:1: expected a JSON list of records, got {type(data).__name__}")
    # The file is valid JSON, so re-walking it with raw_decode from each element's offset cannot fail.
    decoder, pos = JSON_DECODER, text.index("[") + 1
    for _ in data:
        pos = _BETWEEN.match(text, pos).end()
        element, end = decoder.raw_decode(text, pos)
        yield element, f"{path}:{text.count(chr(10), 0, pos) + 1}"
        pos = end


def _id_tag(name: str, stem: str) -> str:
    """What tells files or splits apart in ids, without the benchmark's name: "prosqa_test" -> "test-"."""
    tag = re.sub(r"[^a-z0-9]", "", stem.lower()).removeprefix(re.sub(r"[^a-z0-9]", "", name))
    return f"{tag}-" if tag else ""


def _read_local(spec: BenchmarkSpec, path: str) -> list[tuple[BenchmarkItem, str]]:
    """(item, "path:line") for every record of a local benchmark file."""
    tag, suffix = _id_tag(spec.name, Path(path).stem), Path(path).suffix.lower()
    if spec.name == "gsm8k" and suffix == ".txt":
        return [(BenchmarkItem(f"gsm8k-{tag}{i}", e.question, _number(e.answer, e.origin, "answer"), "number",
                               e.steps), e.origin) for i, e in enumerate(read_examples(path, "icot"))]
    if suffix != {"jsonl": ".jsonl", "json-list": ".json"}[spec.container]:
        raise DataError(f"{path}: {spec.name} cannot read a {suffix or 'suffix-less'} file;"
                        f" expected {spec.expected}")
    records = _jsonl_records(path) if spec.container == "jsonl" else _json_list_records(path)
    return [(spec.convert(record, where, i, tag), where) for i, (record, where) in enumerate(records)]


def _read_hub(spec: BenchmarkSpec) -> list[tuple[BenchmarkItem, str]]:
    """(item, "dataset[split]:row") for every row of the hub copy, for users who can reach the hub."""
    hint = f"pass --data-path with the local file: {spec.expected}"
    if spec.hub is None:
        raise DataError(f"{spec.name}: there is no hub copy; {hint}")
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE
    try:
        from datasets import load_dataset
    except ImportError:
        load_dataset = None
    if offline or load_dataset is None:
        why = "HF_HUB_OFFLINE is set" if offline else "the `datasets` package is not installed"
        raise DataError(f"{spec.name}: no --data-path given and the hub cannot be used ({why}); {hint}")
    dataset, config, splits = spec.hub
    items = []
    for split in splits:
        tag = _id_tag(spec.name, split)
        for i, row in enumerate(load_dataset(dataset, config, split=split)):
            where = f"{dataset}[{split}]:{i}"
            items.append((spec.convert(spec.from_hub(dict(row)), where, i, tag), where))
    return items


def load_benchmark(name: str, data_path: str | os.PathLike | None = None, *,
                   limit: int | None = None) -> list[BenchmarkItem]:
    """The items of a benchmark, from a local file or the hub; `limit` keeps the first N."""
    if name not in BENCHMARKS:
        raise DataError(f"unknown benchmark {name!r}; known benchmarks: {', '.join(BENCHMARK_NAMES)}")
    if limit is not None and limit < 0:
        raise DataError(f"{name}: limit must be >= 0, got {limit}")
    spec = BENCHMARKS[name]
    located = _read_hub(spec) if data_path is None else _read_local(spec, os.fspath(data_path))
    if not located:
        raise DataError(f"{data_path or name}: no items found")
    seen: dict[str, str] = {}
    for item, where in located:
        # Results are keyed by id (resumable streams), so a repeated id would silently drop an item.
        if seen.setdefault(item.id, where) != where:
            raise DataError(f"{where}: id {item.id!r} repeats the id of {seen[item.id]}")
    items = [item for item, _ in located]
    return items[:limit] if limit is not None else items
