"""dartlm probe: the probe itself, the logit lens, the positions each method's prompt gives, and target parsing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import write_arithmetic_file
from dartlm.config import load_config
from dartlm.eval.benchmarks import BenchmarkItem, load_benchmark
from dartlm.generate import generate, load_exported, prompt_ids
from dartlm.experiments.probe import ProbeData, collect_states, fit_probe, intermediate_results, logit_lens
from dartlm.exports.run import export_run
from dartlm.training.run import train

QUESTIONS = ["Tom has 12 apples and buys 30 more. He doubles them. How many apples?", "What is 3 + 4?",
             "Ann has 7 pens.", "A shop sells 12 pens a day for 7 days, then 3 more days. How many pens?"]
ANSWERS = ["84", "7", "7", "120"]


def test_a_probe_recovers_a_planted_feature_and_the_control_is_at_chance():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=600)
    x = rng.normal(size=(600, 32))
    x[:, :4] += 3.0 * np.eye(4)[labels]  # the class is written linearly into four directions
    scores = fit_probe(x[:400], labels[:400], x[400:], labels[400:])
    assert scores["accuracy"] > 0.9  # the Bayes rate of this mixture is about 0.93
    assert abs(scores["control"] - 0.25) < 0.1 and abs(scores["majority"] - 0.25) < 0.1
    noise = fit_probe(rng.normal(size=(400, 32)), labels[:400], rng.normal(size=(200, 32)), labels[400:])
    assert noise["accuracy"] < 0.4  # nothing planted: nothing found


def test_intermediate_results_from_the_synthetic_and_gsm8k_formats(tmp_path):
    assert intermediate_results(("<<2+6=8>>", "<<8-1=7>>")) == ("8", "7")
    gsm8k = "Natalia sold 48/2 = <<48/2=24>>24 clips in May. Altogether <<48+24=72>>72 and <<1000+234=1,234>>."
    assert intermediate_results((gsm8k,)) == ("24", "72", "1234")
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps({"question": "q1?", "answer": "<<1+2=3>>3 then <<3*2=6>>6\n#### 6"}) + "\n"
                    + json.dumps({"question": "q2?", "answer": "It is 5.\n#### 5"}) + "\n")
    data = ProbeData.from_items(load_benchmark("gsm8k", path))
    assert data.targets == {"step_1": ["3", None], "step_2": ["6", None], "answer": ["6", "5"]}
    assert data.skipped() == {"step_1": 1, "step_2": 1, "answer": 0}


@pytest.fixture(scope="module")
def exported_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    train_file = root / "train.txt"
    write_arithmetic_file(train_file)
    models = {}
    for method in ("dart", "nocot", "cot", "coconut"):
        config = load_config(f"tiny/{method}", [f"data.train_path={train_file}", "training.max_steps=3"])
        train(config, root / f"run-{method}")
        export_run(root / f"run-{method}", root / method, log=lambda *_: None)
        models[method] = load_exported(root / method)
    models["folders"] = {m: root / m for m in ("dart", "nocot", "cot", "coconut")}
    return models


@pytest.mark.parametrize("method", ["dart", "nocot", "cot", "coconut"])
def test_positions_are_the_same_batched_under_left_padding_and_one_by_one(method, exported_models):
    model, tokenizer, spec = exported_models[method]
    batched = collect_states(model, tokenizer, spec, QUESTIONS, ANSWERS, batch_size=4)
    single = [collect_states(model, tokenizer, spec, [q], [a], batch_size=1) for q, a in zip(QUESTIONS, ANSWERS)]
    assert batched.positions == single[0].positions
    assert len(batched.positions) == (spec.num_thought_tokens if method in ("dart", "coconut") else 0) + 1
    assert torch.allclose(batched.hidden, torch.cat([s.hidden for s in single]), atol=1e-5)


@pytest.mark.parametrize("method", ["dart", "nocot"])
def test_each_state_is_the_models_state_at_that_token_of_its_prompt(method, exported_models):
    """A causal model's state at position p depends on tokens up to p: each collected state must equal the last
    state of the prompt cut right after its token (a thought token, or the separator's last token for z_N)."""
    model, tokenizer, spec = exported_models[method]
    states = collect_states(model, tokenizer, spec, QUESTIONS, ANSWERS)
    thought_id = tokenizer.convert_tokens_to_ids(spec.thought_token) if spec.thought_token else None
    for row, ids in enumerate(prompt_ids(QUESTIONS, tokenizer, spec)):
        thoughts = [p for p, t in enumerate(ids) if t == thought_id] if thought_id is not None else []
        assert len(thoughts) == spec.num_thought_tokens if method == "dart" else not thoughts
        for column, cut in enumerate(thoughts + [len(ids) - 1]):
            with torch.no_grad():
                out = model(input_ids=torch.tensor([ids[: cut + 1]]), output_hidden_states=True)
            expected = torch.stack([h[0, -1] for h in out.hidden_states])
            assert torch.allclose(states.hidden[row, :, column], expected, atol=1e-5)


def test_cot_z_n_follows_the_models_own_chain(exported_models):
    model, tokenizer, spec = exported_models["cot"]
    states = collect_states(model, tokenizer, spec, QUESTIONS, ANSWERS)
    written = [spec.separator in g.text for g in generate(model, tokenizer, spec, QUESTIONS)]
    assert states.valid == written  # items whose chain never reaches the separator are not probed
    assert states.skipped["no separator in the model's chain"] == written.count(False)


def test_logit_lens_of_the_last_layer_is_the_models_own_output(exported_models):
    model, tokenizer, spec = exported_models["dart"]
    states = collect_states(model, tokenizer, spec, QUESTIONS, ANSWERS)
    lens = logit_lens(model, states, tokenizer)
    with torch.no_grad():
        last = [model(input_ids=torch.tensor([ids])).logits[0, -1].softmax(-1)
                for ids in prompt_ids(QUESTIONS, tokenizer, spec)]
    expected = sum(p[g] for p, g in zip(last, states.gold_first_token)).item() / len(QUESTIONS)
    assert lens["gold_probability"][-1][-1] == pytest.approx(expected, rel=1e-4)
    # Earlier layers go through the final norm first: the lens there is not the identity of the last layer's.
    assert lens["gold_probability"][0][-1] != pytest.approx(expected, rel=1e-4)


def test_probe_command_writes_json_plot_and_summary(exported_models, tmp_path):
    from dartlm.cli import main

    data = tmp_path / "test.txt"
    write_arithmetic_file(data, count=40, seed=3)
    out = tmp_path / "probe"
    folder = exported_models["folders"]["dart"]
    assert main(["probe", str(folder), "--data", str(data), "--output", str(out), "--layers", "0,1"]) == 0
    result = json.loads((out / "probe.json").read_text())
    assert result["layers"] == [0, 1, 2] and set(result["probes"]) == {"step_1", "step_2", "answer"}
    grid = result["probes"]["answer"]["accuracy"]
    assert len(grid) == 3 and len(grid[0]) == len(result["positions"]) == 5
    assert result["fit_items"] == 28 and result["held_out_items"] == 12
    assert (out / "probe.png").stat().st_size > 0 and "| answer |" in (out / "probe.md").read_text()
    assert main(["probe", str(folder), "--data", str(data), "--output", str(out), "--layers", "7"]) == 2


def test_items_of_the_right_kind_only(tmp_path):
    item = BenchmarkItem("x", "q?", "5", "number", ("no annotations here",))
    assert ProbeData.from_items([item]).targets == {"answer": ["5"]}


def test_the_gold_token_is_the_answers_first_non_blank_token(tokenizer):
    from dartlm.experiments.probe import first_content_token

    ids = tokenizer(" 84", add_special_tokens=False)["input_ids"]
    token = first_content_token(ids, tokenizer)
    assert tokenizer.decode([token]).strip().startswith("8")
