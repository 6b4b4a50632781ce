"""dartlm eval: scoring through the real pipeline, streaming, resume, refusal to mix, and the report."""

from __future__ import annotations

import json

import pytest

from test_export import SPEC, trained_like
from dartlm.eval import evaluate as evaluate_module
from dartlm.eval.evaluate import EvalSettings, ResumeMismatchError, evaluate
from dartlm.eval.report import load_results, markdown_table, plot_accuracy_vs_latency
from dartlm.generate import Generation
from dartlm.model.export import export_model

QUESTIONS = [
    ("Tom has 12 apples and buys 30 more. How many apples?", "42"),
    ("A shop sells 11 pens a day for 3 days. How many pens?", "33"),
    ("Ann had 40 dollars and spent 9. How much now?", "31"),
    ("Sam reads 1,000 pages and then 200 more. How many pages?", "1,200"),
    ("What is 5 less than 3?", "-2"),
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("model") / "tiny-dart"
    model, tok, probe = trained_like("llama", tokenizer)
    export_model(model, tok, SPEC, probe, folder, log=lambda _: None)
    return folder


@pytest.fixture
def gsm8k_file(tmp_path):
    path = tmp_path / "test.txt"
    path.write_text("".join(f"{q}||<<1+1=2>> #### {a}\n" for q, a in QUESTIONS), encoding="utf-8")
    return path


def settings(path, **kw):
    return EvalSettings(benchmark="gsm8k", data_path=str(path), warmup=0, **kw)


def test_scores_what_the_model_writes(exported, gsm8k_file, tmp_path, monkeypatch):
    """Replace decoding with fixed outputs: items 0, 3 and 4 right (commas, negatives), 1 wrong, 2 right only
    under flexible extraction."""
    outputs = {0: "42", 1: "7", 2: "about 31", 3: "1200", 4: "-2"}
    real = evaluate_module.decode_prompts

    def fake_decode(model, tokenizer, spec, prompts, **kwargs):
        real(model, tokenizer, spec, prompts, **kwargs)  # still run the model, as timing would
        index = fake_decode.calls
        fake_decode.calls += len(prompts)
        return [Generation(outputs[index + k], outputs[index + k], "", 2) for k in range(len(prompts))], 3

    fake_decode.calls = 0
    monkeypatch.setattr(evaluate_module, "decode_prompts", fake_decode)
    results = evaluate(exported, settings(gsm8k_file), tmp_path / "r.json", progress=False)
    assert results["n"] == 5
    assert results["accuracy"]["strict"] == pytest.approx(3 / 5)
    assert results["accuracy"]["flexible"] == pytest.approx(4 / 5)
    assert results["latency_ms"]["n"] == 5 and results["latency_ms"]["median"] > 0
    assert json.loads((tmp_path / "r.json").read_text())["accuracy"] == results["accuracy"]


def test_interrupted_evaluation_resumes_to_the_same_numbers(exported, gsm8k_file, tmp_path):
    full = evaluate(exported, settings(gsm8k_file, batch_size=2, latency_items=2), tmp_path / "full.json",
                    progress=False)
    stream = (tmp_path / "full.jsonl").read_text().splitlines()
    # Keep the header and two finished items, plus half a line as a kill mid-write would leave.
    (tmp_path / "cut.jsonl").write_text("\n".join(stream[:3]) + "\n" + stream[3][:25], encoding="utf-8")
    resumed = evaluate(exported, settings(gsm8k_file, batch_size=2, latency_items=2), tmp_path / "cut.json",
                       progress=False)
    assert resumed["accuracy"] == full["accuracy"]
    outputs = lambda name: {r["id"]: r["output"] for r in map(json.loads, (tmp_path / name).read_text().splitlines())
                            if r["type"] == "item"}
    assert outputs("cut.jsonl") == outputs("full.jsonl")
    assert len(outputs("cut.jsonl")) == 5


def test_a_stream_from_another_evaluation_is_not_mixed_in(exported, gsm8k_file, tmp_path):
    evaluate(exported, settings(gsm8k_file, limit=2), tmp_path / "r.json", progress=False)
    with pytest.raises(ResumeMismatchError, match="max_new_tokens"):
        evaluate(exported, settings(gsm8k_file, limit=2, max_new_tokens=5), tmp_path / "r.json", progress=False)
    other = tmp_path / "other.txt"
    other.write_text(gsm8k_file.read_text().replace("Tom", "Tim"), encoding="utf-8")
    with pytest.raises(ResumeMismatchError, match="data"):
        evaluate(exported, settings(other, limit=2), tmp_path / "r.json", progress=False)


def test_report_table_and_plot(tmp_path):
    rows = [
        {"label": "llama-cot", "method": "cot", "benchmark": "gsm8k", "accuracy": {"strict": 0.588}, "latency_ms": {"median": 425}},
        {"label": "llama-dart", "method": "dart", "benchmark": "gsm8k", "accuracy": {"strict": 0.426}, "latency_ms": {"median": 37}},
        {"label": "llama-dart", "method": "dart", "benchmark": "svamp", "accuracy": {"strict": 0.505}, "latency_ms": {"median": 35}},
    ]
    paths = []
    for i, row in enumerate(rows):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(row))
    results = load_results(paths)
    table = markdown_table(results)
    lines = table.splitlines()
    assert lines[0] == "| model | method | gsm8k | svamp |"
    assert lines[2] == "| llama-cot | cot | 58.8 / 425 | — |"  # the paper's order: CoT first
    assert lines[3] == "| llama-dart | dart | 42.6 / 37 | 50.5 / 35 |"
    plot_accuracy_vs_latency(results, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
