"""The lm-evaluation-harness task: each model's own prompt as text, and lm-eval's scores equal `dartlm eval`'s."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

from conftest import write_arithmetic_file
from dartlm.config import load_config
from dartlm.eval.evaluate import EvalSettings, evaluate
from dartlm.eval.lm_eval_task import PromptNotExpressibleError, write_lm_eval_task
from dartlm.model.adapters import ST_TOKEN
from dartlm.model.export import PromptSpec
from dartlm.exports.run import export_run
from dartlm.training.run import train


def exported(method, tmp_path, train_file, steps=30):
    config = load_config(f"tiny/{method}", [f"data.train_path={train_file}", f"training.max_steps={steps}"])
    train(config, tmp_path / "run")
    export_run(tmp_path / "run", tmp_path / "model", log=lambda *_: None)
    return tmp_path / "model"


def dartlm_scores(model, data, out):
    summary = evaluate(model, EvalSettings(benchmark="gsm8k", data_path=str(data), latency_items=0), out,
                       progress=False)
    records = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    return summary, [r for r in records if r.get("type") == "item"]


@pytest.mark.parametrize("method", ["dart", "cot"])
def test_lm_eval_scores_the_model_as_dartlm_eval_does(method, tmp_path, train_file):
    pytest.importorskip("lm_eval")
    model = exported(method, tmp_path, train_file)
    data = tmp_path / "test.txt"
    write_arithmetic_file(data, count=8, seed=5)
    # Make the accuracy non-trivial: the gold answer of every other item is what the model answers.
    _, records = dartlm_scores(model, data, tmp_path / "first.json")
    lines = data.read_text().splitlines()
    for k, record in enumerate(records):
        if k % 2 == 0 and record["flexible_prediction"] is not None:
            question_and_cot = lines[k].rsplit("####", 1)[0]
            lines[k] = f"{question_and_cot}#### {record['flexible_prediction'].replace(',', '')}"
    data.write_text("\n".join(lines) + "\n")
    summary, records = dartlm_scores(model, data, tmp_path / "dartlm.json")
    assert 0 < summary["accuracy"]["flexible"] < 1

    files = write_lm_eval_task(model, "gsm8k", data, tmp_path / "tasks")
    assert files.items == 8
    result = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model},dtype=float32",
         "--tasks", files.name, "--include_path", str(tmp_path / "tasks"), "--batch_size", "1", "--device", "cpu",
         "--output_path", str(tmp_path / "lm_eval"), "--log_samples"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads(open(glob.glob(str(tmp_path / "lm_eval" / "**" / "results_*.json"), recursive=True)[0])
                        .read())["results"][files.name]
    assert scores["strict,none"] == pytest.approx(summary["accuracy"]["strict"])
    assert scores["flexible,none"] == pytest.approx(summary["accuracy"]["flexible"])
    samples = [json.loads(line) for line in
               open(glob.glob(str(tmp_path / "lm_eval" / "**" / "samples_*.jsonl"), recursive=True)[0])]
    by_id = {s["doc"]["id"]: s for s in samples}
    for record in records:  # item by item: the same text generated, the same verdicts
        sample = by_id[record["id"]]
        assert sample["resps"][0][0].strip() == record["output"]
        assert (sample["strict"], sample["flexible"]) == (float(record["strict"]), float(record["flexible"]))


def test_the_prompt_as_text_tokenises_to_dartlms_ids(tmp_path, train_file):
    model = exported("pause", tmp_path, train_file, steps=1)
    data = tmp_path / "test.txt"
    write_arithmetic_file(data, count=3, seed=1)
    files = write_lm_eval_task(model, "gsm8k", data, tmp_path / "tasks", limit=2, name="mine")
    docs = [json.loads(line) for line in files.data.read_text().splitlines()]
    assert files.yaml.name == "mine.yaml" and len(docs) == 2
    assert docs[0]["prompt"].endswith("<pause>" * 4 + " Answer:") and docs[0]["decode"] == "answer"


def test_continuous_thoughts_and_unfaithful_prompts_are_refused(tmp_path, train_file, monkeypatch):
    from dartlm.eval import lm_eval_task
    from dartlm.eval.lm_eval_task import prompt_text

    coconut = PromptSpec(method="coconut", num_thought_tokens=2, thought_token=None, separator="Answer:",
                         decode="latent", latent_markers=("<bot>", "<eot>"))
    with pytest.raises(PromptNotExpressibleError, match="continuous thoughts"):
        prompt_text("q?", coconut)
    model = exported("dart", tmp_path, train_file, steps=1)
    data = tmp_path / "test.txt"
    write_arithmetic_file(data, count=2)
    # A prompt string that drops a thought token no longer matches the ids dartlm feeds the model.
    monkeypatch.setattr(lm_eval_task, "prompt_text", lambda q, spec: q + ST_TOKEN + " Answer:")
    with pytest.raises(PromptNotExpressibleError, match="gsm8k-test-0: the prompt written as text tokenises"):
        write_lm_eval_task(model, "gsm8k", data, tmp_path / "tasks")
