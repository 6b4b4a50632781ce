"""Guards against distillation collapse: L_distill routed into the student-only weights, and lambda's schedule."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from test_dart_objective import setup  # noqa: F401  (the fixture: a DART adapter model of each family + batch)
from test_latent_methods import randomise
from test_methods import prepared
from dartlm.config import ConfigError, load_config
from dartlm.methods.dart import DartLossSettings, dart_loss
from dartlm.methods.distill_guards import distill_weight_at, routed
from dartlm.model.rem import rem_parameters


def test_routed_keeps_the_value_and_sends_the_gradient_to_the_given_weights_only():
    a = torch.tensor([1.0, 2.0], requires_grad=True)
    b = torch.tensor([3.0, -1.0], requires_grad=True)
    loss = ((a * b).sum()) ** 2  # (3 - 2)^2 = 1; d/da = 2 (a.b) b = [6, -2]; d/db = 2 (a.b) a = [2, 4]
    stand_in = routed(loss, [a])
    assert stand_in.item() == 1.0
    stand_in.backward()
    assert a.grad.tolist() == [6.0, -2.0]
    assert b.grad is None or torch.equal(b.grad, torch.zeros(2))


def test_routed_refuses_an_empty_set_of_student_weights():
    loss = (torch.ones(2, requires_grad=True) * 2).sum()
    with pytest.raises(ValueError, match="no student-only weights"):
        routed(loss, [])


def close(grad, expected) -> bool:
    """Equal up to fp32 rounding of two summation orders: relative to the gradient's size."""
    return (grad - expected).norm().item() <= 1e-4 * expected.norm().item() + 1e-7


def gradients(model, batch, settings, early=False):
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    out = dart_loss(model, batch, settings, backward=(lambda part: part.backward()) if early else None)
    out.total.backward()
    return out, {id(p): p.grad.clone() for p in params}


@pytest.mark.parametrize("early", [False, True])
def test_student_routing_matches_the_hand_split_of_the_gradient(setup, early):  # noqa: F811
    """distill_grad=student: shared weights get d(L_CoT + L_ST) only; REM gets that plus d(lambda L_distill)."""
    model, batch = setup
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.1)  # LoRA B and REM's up factor start at zero
    rem = {id(p) for p in rem_parameters(model)}
    _, cross_entropy = gradients(model, batch, DartLossSettings(distill_weight=0.0))
    paper_out, paper = gradients(model, batch, DartLossSettings(distill_weight=20.0))
    routed_out, student = gradients(model, batch, DartLossSettings(distill_weight=20.0, distill_grad="student"),
                                    early=early)
    assert routed_out.total.item() == pytest.approx(paper_out.total.item(), rel=1e-6)
    shared_moved_by_distill = 0
    for key, grad in student.items():
        expected = paper[key] if key in rem else cross_entropy[key]
        assert close(grad, expected)
        if key not in rem:
            shared_moved_by_distill += not close(paper[key], cross_entropy[key])
    assert rem and shared_moved_by_distill  # the paper's routing does move shared weights: the test can fail


def test_distill_weight_schedule():
    assert [distill_weight_at(20.0, p, 0.25, 0.5) for p in (0.0, 0.2, 0.25, 0.5, 0.75, 1.0)] == \
        [0.0, 0.0, 0.0, 10.0, 20.0, 20.0]
    assert [distill_weight_at(20.0, p, 0.5, 0.0) for p in (0.49, 0.5)] == [0.0, 20.0]
    assert distill_weight_at(20.0, 0.0, 0.0, 0.0) == 20.0  # the paper: lambda from the first step


def test_lambda_is_off_before_the_schedule_starts(setup):  # noqa: F811
    model, batch = setup
    settings = DartLossSettings(distill_weight=20.0, distill_start=0.5, distill_ramp=0.2)
    before = dart_loss(model, batch, settings, progress=0.3)
    assert before.total.item() == pytest.approx((before.cot + before.st).item(), rel=1e-6)
    assert before.logs()["distill_weight"] == 0.0
    during = dart_loss(model, batch, settings, progress=0.6)
    assert during.logs()["distill_weight"] == pytest.approx(10.0)
    assert during.total.item() == pytest.approx((during.cot + during.st + 10.0 * during.distill).item(), rel=1e-6)
    assert "distill_weight" not in dart_loss(model, batch, DartLossSettings()).logs()  # logged only on a schedule


def test_training_follows_the_schedule_step_by_step(train_file, tmp_path):
    from dartlm.training.run import train

    config = load_config("tiny/dart", [f"data.train_path={train_file}", "training.max_steps=8",
                                       "training.logging_steps=1", "training.save_steps=100",
                                       "method.distill_start=0.5", "method.distill_grad=student"])
    train(config, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    weights = [r["distill_weight"] for r in records if "distill_weight" in r]
    # Logged after each step s = 1..8 for the batch of step s - 1 (progress (s - 1) / 8): off for the first half.
    assert weights == [0.0] * 4 + [20.0] * 4


def test_codi_student_routing_reaches_the_projection_and_no_shared_weight(tokenizer):
    model, method, batch, _, _ = prepared("codi", tokenizer)
    model = randomise(model).train()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}

    def grads(**changes):
        method.config = dataclasses.replace(method.config, **changes)
        method.loss_settings = DartLossSettings.from_config(method.config)
        model.zero_grad()
        method.loss(model, batch)[0].backward()
        return {n: p.grad.clone() for n, p in params.items()}

    cross_entropy = grads(distill_weight=0.0)
    paper = grads(distill_weight=20.0, distill_grad="all")
    student = grads(distill_weight=20.0, distill_grad="student")
    projection = {n for n in params if n.startswith("latent_projection.")}
    assert projection and projection != set(params)
    for name, grad in student.items():
        expected = paper[name] if name in projection else cross_entropy[name]
        assert close(grad, expected), name
    assert any(not close(paper[n], cross_entropy[n]) for n in params if n not in projection)


@pytest.mark.parametrize("overrides, message", [
    (["method.distill_grad=rem"], "distill_grad must be all or student"),
    (["method.distill_start=1.5"], "fractions of training"),
    (["method.distill_grad=student", "rem.enabled=false"], "rem.enabled is false"),
])
def test_guard_options_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny/dart", overrides)


def test_paper_configs_keep_the_paper_behaviour():
    for name in ("paper/llama-3.2-1b-dart", "paper/llama-3.2-1b-codi", "paper/gpt2-dart"):
        method = load_config(name).method
        assert (method.distill_grad, method.distill_start, method.distill_ramp) == ("all", 0.0, 0.0)


@pytest.mark.parametrize("threshold, expected", [(10.0, True), (0.0, False)])
def test_a_low_teacher_spread_is_flagged_in_the_log(train_file, tmp_path, caplog, threshold, expected):
    """Any real spread is below 10 (it is about 1 at most), so 10 must flag every logged step; 0 never flags."""
    from dartlm.training.run import train

    config = load_config("tiny/dart", [f"data.train_path={train_file}", "training.max_steps=3",
                                       "training.logging_steps=1", "training.save_steps=100",
                                       f"method.collapse_warning_spread={threshold}"])
    with caplog.at_level("WARNING", logger="dartlm.training.trainer"):
        train(config, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    spreads = [r for r in records if "teacher_spread" in r]
    assert len(spreads) == 3
    assert all(("collapse_suspected" in r) == expected for r in spreads)
    warnings = [m for m in caplog.messages if "distillation collapse suspected" in m]
    assert len(warnings) == (1 if expected else 0)  # warned once per run, flagged at every step
