"""Property-based tests: arbitrary bytes and structures never escape the readers, the overrides, the prompt file or
the eval stream as anything but the project's one-line errors; --skip-invalid counts exactly the invalid records."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dartlm.config import Config, ConfigError, apply_override, from_dict
from dartlm.data.readers import DataError, ReadReport, read_examples
from dartlm.eval.benchmarks import load_benchmark
from dartlm.eval.evaluate import ResumeMismatchError, open_stream
from dartlm.model.export import ExportError, PromptSpec

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


def one_line(error: Exception) -> bool:
    return bool(str(error).strip()) and "\n" not in str(error).strip()


@FUZZ
@given(data=st.binary(max_size=400), fmt=st.sampled_from(["icot", "jsonl", "coconut"]), skip=st.booleans())
def test_any_bytes_give_examples_or_one_data_error(data, fmt, skip):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.bin"
        path.write_bytes(data)
        try:
            examples = read_examples(path, fmt, skip_invalid=skip)
        except DataError as err:
            assert one_line(err) and "data.bin" in str(err)
        else:
            assert examples and all(e.question.strip() and e.answer.strip() for e in examples)


def valid_record(draw_question: str, answer: int) -> dict:
    return {"question": draw_question, "steps": [f"<<{answer}+0={answer}>>"], "answer": answer}


invalid_lines = st.one_of(
    st.just('{"question": "q"'),  # cut JSON
    st.just('{"question": "q", "steps": ["<<1+1=2>>"]}'),  # no answer
    st.just('{"question": 5, "steps": [], "answer": 1}'),  # wrong type
    st.just('{"question": "q", "steps": ["<<1+1=2>>"], "answer": ' + "9" * 5000 + "}"),  # absurd integer
    st.just("[" * 50_000 + "]" * 50_000),  # nested too deeply for the parser
    st.just('"just a string"'),
    st.builds(lambda v: json.dumps(v), json_values).filter(lambda t: not t.startswith("{")),
)


@FUZZ
@given(records=st.lists(st.one_of(
    st.builds(lambda q, a: ("valid", json.dumps(valid_record(q, a))),
              st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30)
              .filter(lambda q: q.strip()), st.integers(0, 10**6)),
    st.builds(lambda line: ("invalid", line), invalid_lines)), min_size=1, max_size=12))
def test_skip_invalid_counts_exactly_the_invalid_records(records):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.jsonl"
        path.write_text("\n".join(line for _, line in records) + "\n", encoding="utf-8")
        report = ReadReport(str(path))
        valid = sum(kind == "valid" for kind, _ in records)
        try:
            examples = read_examples(path, skip_invalid=True, report=report)
        except DataError as err:
            assert valid == 0 and "no examples" in str(err)
            return
        assert len(examples) == valid
        assert len(report.skipped) == len(records) - valid
        # Without --skip-invalid the first invalid record stops the read, naming its line.
        if valid < len(records):
            first_bad = next(i for i, (kind, _) in enumerate(records, 1) if kind == "invalid")
            try:
                read_examples(path)
            except DataError as err:
                assert f"data.jsonl:{first_bad}:" in str(err) and one_line(err)
            else:
                raise AssertionError("an invalid record was accepted")


@FUZZ
@given(data=st.binary(max_size=300), kind=st.sampled_from(["gsm8k", "prosqa", "commonsenseqa", "svamp"]))
def test_benchmark_readers_give_items_or_one_data_error(data, kind):
    suffix = {"gsm8k": ".jsonl", "prosqa": ".json", "commonsenseqa": ".jsonl", "svamp": ".json"}[kind]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"bench{suffix}"
        path.write_bytes(data)
        try:
            load_benchmark(kind, str(path))
        except DataError as err:
            assert one_line(err)


@FUZZ
@given(key=st.text(max_size=30), value=st.text(max_size=40))
def test_any_override_is_applied_or_one_config_error(key, value):
    raw: dict = {"model": {"name_or_path": "x"}}
    try:
        apply_override(raw, f"{key}={value}")
        from_dict(Config, raw, "override").validate("override")
    except ConfigError as err:
        assert one_line(err)


@FUZZ
@given(section=st.sampled_from(["training", "method", "lora", "rem", "data", "model"]),
       name=st.sampled_from(["lr", "batch_size", "max_steps", "epochs", "warmup_ratio", "distill_weight", "rank",
                             "alpha", "dropout", "max_length", "num_thought_tokens", "dtype", "seed"]),
       value=json_values)
def test_any_structure_as_a_known_key_is_accepted_or_one_config_error(section, name, value):
    raw = {"model": {"name_or_path": "x"}, section: {name: value}}
    try:
        from_dict(Config, raw, "file.yaml").validate("file.yaml")
    except ConfigError as err:
        assert one_line(err) and "file.yaml" in str(err)


@FUZZ
@given(fields=json_values | st.dictionaries(
    st.sampled_from(["method", "num_thought_tokens", "thought_token", "separator", "joiner", "decode",
                     "latent_markers", "projection", "quiet_n_ahead", "format_version", "extra"]),
    json_values, max_size=11))
def test_any_prompt_file_gives_a_spec_or_one_export_error(fields):
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "dartlm_prompt.json").write_text(json.dumps(fields), encoding="utf-8")
        try:
            spec = PromptSpec.load(Path(folder))
        except ExportError as err:
            assert one_line(err)
        else:
            assert isinstance(spec.num_thought_tokens, int) and spec.num_thought_tokens >= 0


@FUZZ
@given(body=st.binary(max_size=300))
def test_any_eval_stream_resumes_or_is_refused_in_one_line(body):
    header = {"type": "header", "version": 2, "model": "m"}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "eval.jsonl"
        path.write_bytes(json.dumps(header).encode() + b"\n" + body)
        try:
            records, latencies = open_stream(path, header)
        except ResumeMismatchError as err:
            assert one_line(err)
        else:
            assert all(r["type"] == "item" for r in records.values())
            assert all(isinstance(ms, float) for ms in latencies.values())
