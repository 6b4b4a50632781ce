"""The model card an export writes: Hub metadata, and a stock-transformers snippet that answers as dartlm does."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from dartlm.config import load_config
from dartlm.generate import generate_answers, load_exported
from dartlm.exports.card import CARD_FILE, base_model_id
from dartlm.exports.run import export_run
from dartlm.training.run import train

QUESTIONS = ["Tom has 12 apples and buys 30 more. He doubles them. How many apples?", "What is 3 + 4?"]


def front_matter(card: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert match, "the card starts with a YAML block"
    return yaml.safe_load(match.group(1))


def card_snippet(card: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", card, re.S)
    assert len(blocks) == 1
    return blocks[0]


def run_snippet(code: str, folder, questions: list[str]) -> list[str]:
    """The card's code run once per question (each time with that question), in one fresh interpreter without
    dartlm, in the exported folder; the last line it printed for each."""
    end = "<<end of snippet>>"
    runs = [re.sub(r"^question = .*$", f"question = {q!r}", code, count=1, flags=re.M) + f"\nprint({end!r})\n"
            for q in questions]
    guard = "\nimport sys\nassert not any(m.startswith('dartlm') for m in sys.modules), 'dartlm was imported'\n"
    result = subprocess.run([sys.executable, "-c", "".join(runs) + guard], cwd=folder, capture_output=True,
                            text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    printed = result.stdout.split(end + "\n")[:-1]
    assert len(printed) == len(questions), result.stdout[-2000:]
    return [part.splitlines()[-1] if part.strip() else "" for part in printed]


@pytest.mark.parametrize("method", ["dart", "cot", "nocot", "pause", "coconut", "codi", "quiet-star"])
def test_the_cards_snippet_answers_as_dartlm_does(method, tmp_path, train_file):
    config = load_config(f"tiny/{method}", [f"data.train_path={train_file}", "training.max_steps=4",
                                            "training.batch_size=8", "training.logging_steps=1"])
    run_dir, out = tmp_path / "run", tmp_path / "out"
    train(config, run_dir)
    export_run(run_dir, out, log=lambda *_: None)
    card = (out / CARD_FILE).read_text(encoding="utf-8")
    meta = front_matter(card)
    assert meta["library_name"] == "transformers" and method in meta["tags"]
    assert "base_model" not in meta  # trained from scratch: there is no base to name
    assert "Tom has" in card  # the snippet asks a training question
    assert "steps of 8 x 1 examples" in card and "Not evaluated" in card
    model, tokenizer, spec = load_exported(out)
    expected = [generate_answers(model, tokenizer, spec, [question])[0] for question in QUESTIONS]
    assert run_snippet(card_snippet(card), out, QUESTIONS) == expected


def test_results_given_at_export_fill_the_evaluation_table(tmp_path, train_file):
    config = load_config("tiny/dart", [f"data.train_path={train_file}", "training.max_steps=2"])
    train(config, tmp_path / "run")
    summary = {"benchmark": "gsm8k", "data": "/data/test.txt", "n": 40, "accuracy": {"strict": 0.25, "flexible": 0.3},
               "latency_ms": {"median": 12.34, "n": 40}, "new_tokens": {"mean": 3.5}}
    export_run(tmp_path / "run", tmp_path / "out", results=[summary], log=lambda *_: None)
    card = (tmp_path / "out" / CARD_FILE).read_text(encoding="utf-8")
    assert "| gsm8k: `test.txt` | 40 | 25.0% | 30.0% | 12.3 ms | 3.5 |" in card
    assert "λ = 20" in card and "REM d = 8" in card


def test_base_model_metadata_names_the_hub_model(tmp_path):
    assert base_model_id("")[0] is None
    assert base_model_id("meta-llama/Llama-3.2-1B")[0] == "meta-llama/Llama-3.2-1B"
    assert base_model_id("smollm2-135m")[0] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    converted = tmp_path / "converted"
    converted.mkdir()
    (converted / "dartlm_source.json").write_text(json.dumps({"hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct"}))
    assert base_model_id(str(converted))[0] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    plain = tmp_path / "my-model"
    plain.mkdir()
    hub_id, text = base_model_id(str(plain))
    assert hub_id is None and "my-model" in text


def test_export_refuses_a_results_file_that_is_not_an_eval_summary(tmp_path, capsys):
    from dartlm.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text('{"loss": 1}')
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "out"), "--results", str(bad)]) == 2
    assert "bad.json: not a summary written by `dartlm eval`" in capsys.readouterr().err


def test_the_snippet_starts_with_bos_where_the_tokenizer_puts_one(tokenizer):
    from tokenizers.processors import TemplateProcessing

    from dartlm.exports.card import snippet
    from dartlm.model.export import PromptSpec

    spec = PromptSpec(method="dart", num_thought_tokens=2, thought_token="<st>", separator="Answer:")
    assert "ids = encode(question)" in snippet(spec, tokenizer, "q?")
    with_bos = type(tokenizer)(tokenizer_object=tokenizer.backend_tokenizer.__class__.from_str(
        tokenizer.backend_tokenizer.to_str()), bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    bos = with_bos.convert_tokens_to_ids("<|endoftext|>")
    with_bos.backend_tokenizer.post_processor = TemplateProcessing(single="<|endoftext|> $A",
                                                                   special_tokens=[("<|endoftext|>", bos)])
    assert with_bos("a")["input_ids"][0] == bos
    assert f"ids = [{bos}] + encode(question)" in snippet(spec, with_bos, "q?")
