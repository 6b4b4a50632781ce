"""The general arithmetic corpus and the cached base model the demo fine-tunes in the paper's regime."""

from __future__ import annotations

import json
import random
import re

import pytest

from dartlm.data.arithmetic_text import ArithmeticText, chain, corpus
from dartlm.data.synthetic import SyntheticTask, generate_splits
from dartlm.model.base_lm import BASE_FILE, BaseModelSpec, ensure_base


def test_lines_are_deterministic_and_their_arithmetic_is_right():
    spec = ArithmeticText(seed=3)
    lines = corpus(spec, 400)
    assert lines == corpus(spec, 400) and lines[100:] == corpus(spec, 300, start=100)
    assert lines != corpus(ArithmeticText(seed=4), 400)
    checked = 0
    for text in lines:
        if re.fullmatch(r"[\d +\-*]+ = \d+", text):  # a bare expression: its answer is the chain's value
            expression, answer = text.split(" = ")
            assert eval(expression) == int(answer), text  # only digits and + - * by construction
            checked += 1
            continue
        for a, op, b, c in re.findall(r"(\d+) ?([+\-*]) ?(\d+) ?= ?(\d+)", text):  # worked steps, <<a+b=c>>
            assert {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op] == int(c), text
            checked += 1
    assert checked > 400


def test_chains_stay_in_range():
    spec = ArithmeticText(max_operand=9, max_value=30, max_ops=5, operations="+-*")
    rng = random.Random(0)
    for _ in range(500):
        start, steps = chain(spec, rng, 5)
        assert 1 <= start <= 9
        for op, a, b, c in steps:
            assert 0 <= c <= 30 and 1 <= b <= 9


def test_the_corpus_is_not_the_evaluation_task():
    """No line of the pretraining text is a problem of the task, nor uses its templates or layout."""
    task_questions = [e.question for e in generate_splits(SyntheticTask(), 300, 30, 30)["train"]]
    task_openings = {q.split(".")[0].split()[1] for q in task_questions}  # "has", "starts", "owns", "keeps"
    lines = corpus(ArithmeticText(), 2000)
    assert not any("||" in t or "####" in t or "Answer:" in t for t in lines)
    assert not any(f" {verb} " in t for t in lines for verb in task_openings)


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match="operations"):
        ArithmeticText(operations="+/")
    with pytest.raises(ValueError, match="max_operand"):
        ArithmeticText(max_operand=200, max_value=99)


def test_base_is_built_once_cached_and_rebuilt_on_request(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("DARTLM_CACHE", str(tmp_path / "cache"))
    spec = BaseModelSpec(layers=1, hidden=32, heads=2, vocab_size=300, lines=2000, steps=3, batch_size=4, seq_len=32)
    messages = []
    folder = ensure_base(spec, log=messages.append)
    assert folder == spec.folder() and folder.parent == tmp_path / "cache" / "models"
    note = json.loads((folder / BASE_FILE).read_text())
    assert note["spec"]["steps"] == 3 and len(note["losses"]) == 3
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.num_hidden_layers == 1 and len(AutoTokenizer.from_pretrained(folder)) <= 300
    built = len(messages)
    assert ensure_base(spec, log=messages.append) == folder and len(messages) == built  # cached: nothing trains
    ensure_base(spec, rebuild=True, log=messages.append)
    assert len(messages) > built
    assert BaseModelSpec(steps=4).folder() != BaseModelSpec(steps=3).folder()  # another setting, another base
    assert not list(folder.parent.glob(".*tmp*"))  # no half-built folder is left behind


def test_the_demos_base_ships_in_the_package_loads_and_matches_its_hashes():
    from dataclasses import asdict

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dartlm.experiments.settings import DemoSettings, base_spec
    from dartlm.model.base_lm import shipped_base, verify_shipped

    spec = base_spec(DemoSettings())
    folder = shipped_base(spec)
    assert folder is not None, "the demo's default base must ship with the package"
    record = verify_shipped(folder)
    assert record["spec"] == json.loads(json.dumps(asdict(spec)))
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 10 * 2**20
    model = AutoModelForCausalLM.from_pretrained(folder)
    note = json.loads((folder / BASE_FILE).read_text())
    assert sum(p.numel() for p in model.parameters()) == note["parameters"]
    assert len(AutoTokenizer.from_pretrained(folder)) == model.config.vocab_size


def test_the_shipped_base_is_installed_without_building_and_a_tampered_one_is_refused(tmp_path, monkeypatch):
    import shutil

    from dartlm.model import base_lm
    from dartlm.storage import file_hashes

    monkeypatch.setenv("DARTLM_CACHE", str(tmp_path / "cache"))
    spec = BaseModelSpec(layers=1, hidden=32, heads=2, vocab_size=300, lines=2000, steps=3, batch_size=4, seq_len=32)
    built = ensure_base(spec, log=lambda *_: None)
    shipped_root = tmp_path / "shipped"
    source = base_lm.ship_base(spec, built, shipped_root)
    shutil.rmtree(built)
    monkeypatch.setattr(base_lm, "SHIPPED_DIR", shipped_root)

    def no_build(*args, **kwargs):
        raise AssertionError("the shipped base must be used, not built")

    monkeypatch.setattr(base_lm, "build_base", no_build)
    messages = []
    folder = ensure_base(spec, log=messages.append)
    assert "shipped with dartlm" in messages[0]
    assert file_hashes(folder) == file_hashes(source)
    # A user's cached base is used as it is; --shipped puts the shipped one back.
    (folder / "config.json").write_text((folder / "config.json").read_text().replace("32", "33", 1))
    assert ensure_base(spec, log=messages.append) == folder and len(messages) == 1
    ensure_base(spec, shipped=True, log=messages.append)
    assert file_hashes(folder) == file_hashes(source)
    # A shipped base that no longer matches its hashes is refused, naming the file.
    with open(source / "model.safetensors", "r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\x00\x00\x00\x01")
    with pytest.raises(base_lm.ShippedBaseError, match="model.safetensors"):
        ensure_base(spec, shipped=True, log=messages.append)


def test_an_archived_base_is_installed_once_and_another_build_in_the_cache_is_refused(tmp_path, monkeypatch):
    import shutil

    from dartlm.model import base_lm
    from dartlm.storage import file_hashes

    monkeypatch.setenv("DARTLM_CACHE", str(tmp_path / "cache"))
    spec = BaseModelSpec(layers=1, hidden=32, heads=2, vocab_size=300, lines=2000, steps=3, batch_size=4, seq_len=32)
    built = ensure_base(spec, log=lambda *_: None)
    archived = base_lm.ship_base(spec, built, tmp_path / "archive" / "bases")
    shutil.rmtree(built)
    messages = []
    folder = base_lm.install_base(archived, log=messages.append)
    assert folder == spec.folder() and file_hashes(folder) == file_hashes(archived)
    assert len(messages) == 1 and "installed" in messages[0]
    assert base_lm.install_base(archived, log=messages.append) == folder and len(messages) == 1  # already there
    # A cache whose build note differs but whose weights are the same is the same base: left as it is.
    note = folder / BASE_FILE
    note.write_text(note.read_text().replace('"train_s"', '"train_s_other"'))
    assert base_lm.install_base(archived, log=messages.append) == folder and len(messages) == 1
    # Another build of the same settings in the cache (its weights differ) is not replaced.
    with open(folder / "model.safetensors", "r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\x00\x00\x00\x02")
    with pytest.raises(base_lm.ShippedBaseError, match="another build"):
        base_lm.install_base(archived, log=messages.append)
    # An archive whose files changed is refused, naming the file.
    shutil.rmtree(folder)
    with open(archived / "model.safetensors", "r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\x00\x00\x00\x01")
    with pytest.raises(base_lm.ShippedBaseError, match="model.safetensors"):
        base_lm.install_base(archived, log=messages.append)


def test_a_rebuilt_base_with_the_same_weights_keeps_its_identity_and_old_results_are_still_taken(tmp_path, monkeypatch):
    """A job's fingerprint names its base by settings and file hashes, not by the build note (which holds the build's
    wall time): a base rebuilt to the same bytes keeps its jobs, one with other weights does not. Results written
    with the build note's digest are still taken while that very note is in the cache."""
    from dartlm.config import ConfigError
    from dartlm.experiments.jobs import base_identity, finished_result, legacy_base_identity
    from dartlm.storage import file_hashes

    monkeypatch.setenv("DARTLM_CACHE", str(tmp_path / "cache"))
    spec = BaseModelSpec(layers=1, hidden=32, heads=2, vocab_size=300, lines=2000, steps=3, batch_size=4, seq_len=32)
    folder = ensure_base(spec, log=lambda *_: None)
    first, first_legacy = base_identity(folder), legacy_base_identity(folder)
    weights = file_hashes(folder, exclude=(BASE_FILE,))
    ensure_base(spec, rebuild=True, log=lambda *_: None)
    assert file_hashes(folder, exclude=(BASE_FILE,)) == weights  # one machine, one thread count: the same bytes
    assert base_identity(folder) == first
    # Its note records another wall time: the legacy identity changes, the identity does not.
    note = json.loads((folder / BASE_FILE).read_text())
    (folder / BASE_FILE).write_text(json.dumps({**note, "train_s": note["train_s"] + 1}))
    assert base_identity(folder) == first and legacy_base_identity(folder) != first_legacy
    # Other weights, another base.
    with open(folder / "model.safetensors", "r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\x00\x00\x00\x03")
    assert base_identity(folder) != first
    # A result recorded under the legacy identity is taken only through `also`.
    result = tmp_path / "nocot-val.json"
    result.write_text(json.dumps({"fingerprint": "legacy-print"}))
    assert finished_result(result, "new-print", also=("legacy-print",))
    with pytest.raises(ConfigError, match="other settings"):
        finished_result(result, "new-print")
