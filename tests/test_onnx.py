"""ONNX Runtime: tiny DART, No-CoT, PauseFT and CoT exports give exactly dartlm's greedy tokens, item by item, and
`dartlm eval --engine onnxruntime` scores them with the same evaluator."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install -e \".[onnx]\")")

from dartlm.cli import main  # noqa: E402
from dartlm.config import load_config  # noqa: E402
from dartlm.engines.onnx import load_onnx  # noqa: E402
from dartlm.generate import decode_prompts, load_exported, prompt_ids  # noqa: E402
from dartlm.model.export import ExportError  # noqa: E402
from dartlm.exports.run import export_run  # noqa: E402
from dartlm.training.run import train  # noqa: E402

from conftest import write_arithmetic_file  # noqa: E402

QUESTIONS = ["Tom has 12 apples and buys 30 more. He doubles them. How many apples?", "What is 2 and 2?",
             "Tom has 3 apples.", "Ann had 40 dollars and spent 9. Then she earned 25. How much now? Say it."]


@pytest.mark.parametrize("method", ["dart", "nocot", "pause", "cot"])
def test_onnx_runtime_gives_dartlms_greedy_tokens(tmp_path, train_file, method):
    config = load_config(f"tiny/{method}", [f"data.train_path={train_file}", "training.max_steps=30",
                                            "training.batch_size=8"])
    train(config, tmp_path / "run")
    export_run(tmp_path / "run", tmp_path / "model", log=lambda *_: None)
    assert main(["onnx", str(tmp_path / "model"), str(tmp_path / "onnx")]) == 0
    model, tokenizer, spec = load_exported(tmp_path / "model")
    engine, onnx_tokenizer, onnx_spec = load_onnx(tmp_path / "onnx")
    assert onnx_spec == spec
    prompts = prompt_ids(QUESTIONS, tokenizer, spec)  # different lengths: left padding in one batch
    expected, torch_passes = decode_prompts(model, tokenizer, spec, prompts, max_new_tokens=12)
    found, onnx_passes = decode_prompts(engine, onnx_tokenizer, spec, prompts, max_new_tokens=12)
    assert sum(g.num_tokens for g in expected) >= len(QUESTIONS)  # real continuations, not all an immediate eos
    assert [g.text for g in found] == [g.text for g in expected]
    assert [g.num_tokens for g in found] == [g.num_tokens for g in expected] and onnx_passes == torch_passes

    data = tmp_path / "test.txt"
    write_arithmetic_file(data, count=6, seed=5)
    scores = {}
    for engine_name, folder in (("torch", "model"), ("onnxruntime", "onnx")):
        out = tmp_path / f"{engine_name}.json"
        assert main(["eval", str(tmp_path / folder), "--benchmark", "gsm8k", "--data-path", str(data), "--engine",
                     engine_name, "--output", str(out), "--latency-items", "0", "--max-new-tokens", "12"]) == 0
        records = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()[1:]]
        scores[engine_name] = [(r["id"], r["output"], r["strict"]) for r in records]
    assert scores["onnxruntime"] == scores["torch"]


def test_continuous_thought_models_are_refused(tmp_path, train_file, capsys):
    config = load_config("tiny/codi", [f"data.train_path={train_file}", "training.max_steps=1",
                                       "training.batch_size=4"])
    train(config, tmp_path / "run")
    export_run(tmp_path / "run", tmp_path / "model", log=lambda *_: None)
    assert main(["onnx", str(tmp_path / "model"), str(tmp_path / "onnx")]) == 2
    assert "ONNX Runtime serves models prompted with tokens only" in capsys.readouterr().err
    assert not (tmp_path / "onnx").exists()
    with pytest.raises(ExportError, match="no model.onnx"):
        load_onnx(tmp_path / "model")


def test_int8_dynamic_quantisation_runs_and_records_its_distance(tmp_path, train_file):
    config = load_config("tiny/dart", [f"data.train_path={train_file}", "training.max_steps=30",
                                       "training.batch_size=8"])
    train(config, tmp_path / "run")
    export_run(tmp_path / "run", tmp_path / "model", log=lambda *_: None)
    assert main(["onnx", str(tmp_path / "model"), str(tmp_path / "fp32")]) == 0
    assert main(["onnx", str(tmp_path / "model"), str(tmp_path / "int8"), "--quantize", "int8"]) == 0
    info = json.loads((tmp_path / "int8" / "dartlm_onnx.json").read_text())
    assert info["quantization"] == "int8" and info["check_difference"] <= 1e-4
    assert 0 < info["int8_difference"] < 1  # not exact, not garbage
    assert (tmp_path / "int8" / "model.onnx").stat().st_size < (tmp_path / "fp32" / "model.onnx").stat().st_size
    engine, tokenizer, spec = load_onnx(tmp_path / "int8")
    generations, _ = decode_prompts(engine, tokenizer, spec, prompt_ids(QUESTIONS, tokenizer, spec), max_new_tokens=8)
    assert len(generations) == len(QUESTIONS)


def test_engines_benchmark_scores_apart_from_timing_and_reuses_its_scores(tmp_path, train_file):
    """benchmarks/engines.py: --accuracy-only scores every export on every engine and times nothing; the full run
    afterwards scores nothing again (the per-item streams keep their lines) and only times, then checks the claims."""
    import subprocess
    import sys
    from pathlib import Path

    exports = []
    for method in ("nocot", "dart"):
        config = load_config(f"tiny/{method}", [f"data.train_path={train_file}", "training.max_steps=10",
                                                "training.batch_size=8"])
        train(config, tmp_path / f"run-{method}")
        export_run(tmp_path / f"run-{method}", tmp_path / method, log=lambda *_: None)
        exports.append(f"{method}={tmp_path / method}")
    data = tmp_path / "test.txt"
    write_arithmetic_file(data, count=4, seed=5)
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "engines.py"
    common = [sys.executable, str(script), "--exports", *exports, "--data", str(data), "--items", "4",
              "--latency-items", "2", "--engines", "torch fp32,onnxruntime fp32", "--threads", "1",
              "--work-dir", str(tmp_path / "work")]
    scored = subprocess.run([*common, "--accuracy-only"], capture_output=True, text=True)
    assert scored.returncode == 0, scored.stderr[-2000:]
    streams = sorted((tmp_path / "work" / "scores").rglob("*.jsonl"))
    assert len(streams) == 4  # 2 engines x 2 exports
    lines = {p: p.read_text().count("\n") for p in streams}
    assert all(n == 5 for n in lines.values())  # a header and 4 items, no latency lines
    assert not list(tmp_path.glob("result*"))
    out = tmp_path / "result"
    timed = subprocess.run([*common, "--output", str(out)], capture_output=True, text=True)
    assert timed.returncode == 0, timed.stderr[-2000:]
    assert {p: p.read_text().count("\n") for p in streams} == lines  # nothing scored again
    result = json.loads(out.with_suffix(".json").read_text())
    assert set(result["engines"]) == {"torch fp32", "onnxruntime fp32"}
    for rows in result["engines"].values():
        assert rows["dart"]["accuracy"]["n"] == 4 and rows["dart"]["latency_ms"]["median"] > 0
    assert set(result["claims"]["onnxruntime fp32"]) == {"DART/No-CoT latency", "DART/No-CoT prompt tokens"}
    assert out.with_suffix(".md").is_file() and out.with_suffix(".png").is_file()
    missing = subprocess.run(common, capture_output=True, text=True)
    assert missing.returncode == 2 and "--output is required" in missing.stderr
