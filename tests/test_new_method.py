"""A new method is one class: defined here, registered, and then trained, exported, evaluated, decoded and described
in a model card by the ordinary commands, without a line of the package edited."""

from __future__ import annotations

import json

from dataclasses import dataclass

import pytest
import torch.nn.functional as F

from dartlm.cli import main
from dartlm.config import ConfigError, MethodSettings, load_config
from dartlm.data.layout import ANSWER, build_pathway
from dartlm.methods import METHODS, register_method
from dartlm.methods.base import Method, forward
from dartlm.thinking import MODES, Thinking, register_thinking

from conftest import write_arithmetic_file


@dataclass
class SmoothingSettings(MethodSettings):
    label_smoothing: float = 0.1  # a setting of the toy method's own, set under `method:` in a config file

    def validate(self, where):
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"{where}: method.label_smoothing must be in [0, 1), got {self.label_smoothing}")


class SmoothedAnswerMethod(Method):
    """No-CoT's layout with label-smoothed cross-entropy on the answer tokens (a toy, not a recipe)."""

    name = "smoothed-answer"
    title = "Smoothed answer"
    description = "A toy method defined in a test: the answer alone, trained with label smoothing."
    settings_class = SmoothingSettings

    def card_lines(self, config):
        return [f"- label smoothing {self.settings.label_smoothing:g}"]

    def layout(self, segments, thought_id):
        return build_pathway(segments, [])

    def loss(self, model, batch, backward=None):
        logits = forward(model, batch).logits[:, :-1]  # position t predicts token t+1
        targets = batch["input_ids"][:, 1:]
        mask = batch["roles"][:, 1:] == ANSWER
        loss = F.cross_entropy(logits[mask].float(), targets[mask], label_smoothing=self.settings.label_smoothing)
        return loss, {"answer_tokens": float(mask.sum())}


@pytest.fixture
def registered():
    register_method(SmoothedAnswerMethod)
    yield SmoothedAnswerMethod
    METHODS.pop(SmoothedAnswerMethod.name)


def test_a_method_defined_outside_the_package_runs_through_every_command(tmp_path, train_file, registered, capsys,
                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy.yaml").write_text(
        "inherit: tiny/nocot\n"
        "method:\n  name: smoothed-answer\n  label_smoothing: 0.25\n"
        f"data:\n  train_path: {train_file}\n"
        "training:\n  max_steps: 20\n  batch_size: 8\n  logging_steps: 5\n", encoding="utf-8")
    assert main(["train", "toy.yaml", "--output-dir", "run"]) == 0
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["answer_tokens"] for r in logged if "answer_tokens" in r][0] > 0  # the method's own term is logged
    assert main(["export", "run", "model"]) == 0
    assert json.loads((tmp_path / "model" / "dartlm_prompt.json").read_text())["method"] == "smoothed-answer"
    card = (tmp_path / "model" / "README.md").read_text()
    assert "# Smoothed answer model exported by dartlm" in card and "- label smoothing 0.25" in card
    assert "label_smoothing: 0.25" in (tmp_path / "run" / "config.yaml").read_text()
    write_arithmetic_file(tmp_path / "test.txt", count=5, seed=9)
    assert main(["eval", "model", "--benchmark", "gsm8k", "--data-path", "test.txt", "--output", "eval.json",
                 "--latency-items", "0"]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["n"] == 5
    capsys.readouterr()
    assert main(["generate", "model", "Tom has 12 apples and buys 30 more. He doubles them. How many apples?"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1


class TerseThinking(Thinking):
    """A toy way of thinking: the answer prompt, and at most two answer tokens, whatever the model would write."""

    name = "terse"
    max_new_tokens = 2

    def layout(self, spec, bos, separator):
        return f"{bos}question + {separator}, then at most two answer tokens"

    def decode(self, model, tokenizer, spec, batch, *, max_new_tokens, min_new_tokens=0, use_cache=True):
        return super().decode(model, tokenizer, spec, batch, max_new_tokens=min(max_new_tokens, 2),
                              min_new_tokens=min(min_new_tokens, 2), use_cache=use_cache)


class TerseMethod(SmoothedAnswerMethod):
    name = "terse-answer"
    title = "Terse answer"
    decode = TerseThinking.name


@pytest.fixture
def terse():
    register_thinking(TerseThinking())
    register_method(TerseMethod)
    yield TerseMethod
    METHODS.pop(TerseMethod.name)
    MODES.pop(TerseThinking.name)


def test_a_method_with_its_own_way_of_thinking_is_decoded_by_it_everywhere(tmp_path, train_file, terse,
                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy.yaml").write_text(
        "inherit: tiny/nocot\n"
        "method:\n  name: terse-answer\n"
        f"data:\n  train_path: {train_file}\n"
        "training:\n  max_steps: 4\n  batch_size: 8\n", encoding="utf-8")
    assert main(["train", "toy.yaml", "--output-dir", "run"]) == 0
    assert main(["export", "run", "model"]) == 0
    assert json.loads((tmp_path / "model" / "dartlm_prompt.json").read_text())["decode"] == "terse"
    assert "then at most two answer tokens" in (tmp_path / "model" / "README.md").read_text()
    write_arithmetic_file(tmp_path / "test.txt", count=6, seed=9)
    # --max-new-tokens asks for 32; the toy's decode caps every answer at two tokens.
    assert main(["eval", "model", "--benchmark", "gsm8k", "--data-path", "test.txt", "--output", "eval.json",
                 "--latency-items", "0", "--max-new-tokens", "32"]) == 0
    items = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()
             if '"type": "item"' in line]
    assert len(items) == 6 and max(i["new_tokens"] for i in items) <= 2


def test_a_new_methods_own_settings_are_checked_like_any_other(tmp_path, train_file, registered):
    bad = tmp_path / "bad.yaml"
    bad.write_text("inherit: tiny/nocot\nmethod:\n  name: smoothed-answer\n  label_smoothing: 1.5\n"
                   f"data:\n  train_path: {train_file}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.yaml: method\.label_smoothing must be in \[0, 1\), got 1\.5"):
        load_config(bad)
    bad.write_text("inherit: tiny/nocot\nmethod:\n  name: smoothed-answer\n  label_smoothing: lots\n",
                   encoding="utf-8")
    with pytest.raises(ConfigError, match=r"method\.label_smoothing: expected float, got str 'lots'"):
        load_config(bad)


def test_registering_a_taken_name_is_refused(registered):
    class Other(SmoothedAnswerMethod):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_method(Other)
    with pytest.raises(ValueError, match="needs a name"):
        register_method(type("Nameless", (Method,), {}))
    with pytest.raises(ValueError, match="already registered"):
        register_thinking(type("OtherAnswer", (Thinking,), {"name": "answer"})())


def test_an_unknown_way_of_thinking_is_named_with_the_known_ones():
    from dartlm.model.export import ExportError, PromptSpec
    from dartlm.thinking import thinking_for

    spec = PromptSpec(method="someone-elses", num_thought_tokens=0, thought_token=None, separator="Answer:",
                      decode="telepathy")
    with pytest.raises(ExportError, match=r"decode 'telepathy' \(method someone-elses\): no such way of thinking; "
                                          r"known: answer, cot, latent, quiet"):
        thinking_for(spec)
