"""Results can never be stale or mixed: identity of exports, runs and comparison jobs; bad input is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dartlm.cli import main
from dartlm.config import ConfigError, load_config
from dartlm.eval.evaluate import EvalSettings, ResumeMismatchError, evaluate
from dartlm.model.export import MANIFEST_FILE, ExportError, model_fingerprint
from dartlm.exports.run import export_run
from dartlm.training.run import RunError, train
from dartlm.training.trainer import TRAINABLE_WEIGHTS

from conftest import write_arithmetic_file


def tiny_run(run_dir: Path, train_file: Path, *overrides: str, method: str = "nocot", steps: int = 2):
    config = load_config(f"tiny/{method}", [f"data.train_path={train_file}", f"training.max_steps={steps}",
                                             "training.batch_size=4", "training.logging_steps=1", *overrides])
    train(config, run_dir, overwrite=True)
    return config


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Two different tiny No-CoT runs (seeds 1 and 2), their data, and an export of the first."""
    root = tmp_path_factory.mktemp("made")
    data = root / "train.txt"
    write_arithmetic_file(data, count=16)
    tiny_run(root / "run-a", data, "training.seed=1")
    tiny_run(root / "run-b", data, "training.seed=2")
    export_run(root / "run-a", root / "export-a", log=lambda *_: None)
    return root


def visible_files(folder: Path) -> set[str]:
    """Every file under folder except the hidden lock files beside outputs."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if not any(part.startswith(".") for part in p.relative_to(folder).parts)}


# --- identity ------------------------------------------------------------------------------------------------------

def test_an_export_records_every_files_sha256_and_a_reexport_is_another_model(made, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(made / "export-a", folder)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert {"model.safetensors", "config.json", "dartlm_prompt.json", "tokenizer.json"} <= set(manifest["files"])
    assert "README.md" not in manifest["files"]  # the card is rewritten after evaluation
    first = model_fingerprint(folder)
    # Re-exported (--force) into the same folder from another run: same embedding table, other adapters.
    export_run(made / "run-b", folder, force=True, log=lambda *_: None)
    assert model_fingerprint(folder) != first


def test_eval_refuses_to_resume_a_stream_of_a_model_reexported_into_the_same_folder(made, tmp_path):
    folder, data = tmp_path / "model", tmp_path / "test.txt"
    write_arithmetic_file(data, count=6, seed=3)
    shutil.copytree(made / "export-a", folder)
    settings = EvalSettings(benchmark="gsm8k", data_path=str(data), limit=3, latency_items=0, warmup=0)
    evaluate(folder, settings, tmp_path / "out.json", progress=False)
    export_run(made / "run-b", folder, force=True, log=lambda *_: None)
    with pytest.raises(ResumeMismatchError, match="model_fingerprint"):
        evaluate(folder, settings, tmp_path / "out.json", progress=False)


@pytest.mark.parametrize("change", ["edit weights", "add a weight file", "remove the tokenizer"])
def test_a_folder_changed_after_its_export_is_refused_naming_the_files(made, tmp_path, change):
    folder = tmp_path / "model"
    shutil.copytree(made / "export-a", folder)
    if change == "edit weights":
        with open(folder / "model.safetensors", "r+b") as handle:
            handle.seek(-8, 2)
            handle.write(b"\x00" * 8)
        name = "model.safetensors"
    elif change == "add a weight file":
        (folder / "latent_projection.safetensors").write_bytes(b"x")
        name = "latent_projection.safetensors"
    else:
        (folder / "tokenizer.json").unlink()
        name = "tokenizer.json"
    with pytest.raises(ExportError, match=name):
        model_fingerprint(folder)
    # A changed model card is not a changed model.
    shutil.rmtree(folder)
    shutil.copytree(made / "export-a", folder)
    (folder / "README.md").write_text("edited")
    model_fingerprint(folder)


def test_overwrite_leaves_nothing_of_the_old_run(made, tmp_path, monkeypatch):
    run_dir, data = tmp_path / "run", made / "train.txt"
    tiny_run(run_dir, data, "training.save_steps=1", "training.save_total_limit=0")
    assert (run_dir / TRAINABLE_WEIGHTS).is_file() and list(run_dir.glob("checkpoint-*"))

    from dartlm.training import trainer as trainer_module

    def dies(self, *args, **kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(trainer_module.MethodTrainer, "train", dies)
    with pytest.raises(KeyboardInterrupt):
        tiny_run(run_dir, data, "training.seed=5")
    # The new run died before training: nothing of the old one may pass for it.
    assert not (run_dir / TRAINABLE_WEIGHTS).exists()
    assert not list(run_dir.glob("checkpoint-*")) and not (run_dir / "log.jsonl").exists()
    with pytest.raises(RunError, match="no trainable.safetensors"):
        export_run(run_dir, tmp_path / "out", log=lambda *_: None)


def test_resume_refuses_a_changed_config_naming_the_fields(made, tmp_path):
    run_dir, data = tmp_path / "run", made / "train.txt"
    config = tiny_run(run_dir, data)
    config.training.lr = config.training.lr * 2
    config.method.separator = "So:"
    with pytest.raises(RunError, match=r"method\.separator, training\.lr"):
        train(config, run_dir, resume=True)
    config = load_config("tiny/nocot", [f"data.train_path={data}", "training.max_steps=2", "training.batch_size=4",
                                        "training.logging_steps=1", "training.save_steps=7"])
    train(config, run_dir, resume=True)  # how often a run saves is not what it trains


def test_a_cut_last_line_in_the_training_log_is_skipped(made, tmp_path):
    from dartlm.training.run import final_terms

    run_dir = tmp_path / "run"
    shutil.copytree(made / "run-a", run_dir)
    text = (run_dir / "log.jsonl").read_text()
    (run_dir / "log.jsonl").write_text(text + '{"step": 3, "loss": 0.')
    assert final_terms(run_dir)["loss"] == json.loads(text.splitlines()[-1]).get("loss", final_terms(made / "run-a")["loss"])


def test_compare_refuses_results_and_data_of_other_settings(tmp_path):
    from dataclasses import replace

    from dartlm.experiments.jobs import run_comparison
    from dartlm.experiments.variants import resolve_variants
    from dartlm.experiments.settings import DemoSettings

    settings = replace(DemoSettings.quick(), base_steps=0, train_steps=2, n_train=40, n_val=4, n_test=4)
    variants = resolve_variants(["nocot"])
    first = run_comparison(variants, settings, [0], tmp_path, latency_items=0, log=lambda *_: None)
    # The same settings again: the finished job is reused, not trained again.
    again = run_comparison(variants, replace(settings, save_every=1), [0], tmp_path, latency_items=0,
                           log=lambda *_: None)
    assert again["variants"]["nocot"]["train_s_mean"] == first["variants"]["nocot"]["train_s_mean"]
    with pytest.raises(ConfigError, match="holds a result of other settings"):
        run_comparison(variants, replace(settings, train_steps=3), [0], tmp_path, latency_items=0, log=lambda *_: None)
    with pytest.raises(ConfigError, match=r"holds data made with other settings \(n_train differ"):
        run_comparison(variants, replace(settings, n_train=48), [0], tmp_path, latency_items=0, log=lambda *_: None)
    # A result cut short (written in place by an older version, or by hand) is not a finished job: done again.
    result = tmp_path / "seed-0" / "results" / "nocot.json"
    result.write_text(result.read_text()[:40])
    run_comparison(variants, settings, [0], tmp_path, latency_items=0, log=lambda *_: None)
    assert json.loads(result.read_text())["label"] == "nocot"
    (tmp_path / "seed-0" / "data" / "test.txt").write_text("x||y #### 1\n")
    with pytest.raises(ConfigError, match="files changed since the data were written"):
        run_comparison(variants, settings, [0], tmp_path, latency_items=0, log=lambda *_: None)


# --- bad input: one line, exit 2, nothing written --------------------------------------------------------------------

def _write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


QUESTION = {"question": "What is 1 and 1?", "steps": ["<<1+1=2>>"]}
BAD_INPUTS = {
    # training configs and overrides
    "override YAML error": (["train", "tiny/nocot", "training.lr=["], "invalid value"),
    "override unknown key": (["train", "tiny/nocot", "training.lrr=1"], "unknown key(s) training.lrr"),
    "non-UTF-8 config": (["train", "bad.yaml"], "not UTF-8"),
    "lr nan": (["train", "tiny/nocot", "training.lr=nan"], "training.lr must be a finite number > 0"),
    "lr inf": (["train", "tiny/nocot", "training.lr=.inf"], "training.lr must be a finite number > 0"),
    "lr 0": (["train", "tiny/nocot", "training.lr=0"], "training.lr must be a finite number > 0"),
    "lr negative": (["train", "tiny/nocot", "training.lr=-1e-3"], "training.lr must be a finite number > 0"),
    "batch size 0": (["train", "tiny/nocot", "training.batch_size=0"], "training.batch_size must be >= 1"),
    "max steps 0": (["train", "tiny/nocot", "training.max_steps=0"], "training.max_steps must be > 0"),
    "epochs negative": (["train", "tiny/nocot", "training.epochs=-2"], "training.epochs must be"),
    "warmup 1": (["train", "tiny/nocot", "training.warmup_ratio=1"], "training.warmup_ratio must be"),
    "lambda nan": (["train", "tiny/dart", "method.distill_weight=nan"], "method.distill_weight must be"),
    "lora dropout 1": (["train", "tiny/nocot", "lora.dropout=1.0"], "lora.dropout must be"),
    # training data
    "JSON integer of 5,000 digits": (["train", "tiny/nocot", "data.train_path=big.jsonl"],
                                     "big.jsonl:1: field 'answer' must be a string or a number, got an integer of 5000"),
    "deeply nested JSON": (["train", "tiny/nocot", "data.train_path=deep.jsonl"], "deep.jsonl:1: invalid JSON: nested "
                                                                                  "too deeply"),
    "deeply nested JSON list": (["train", "tiny/nocot", "data.train_path=deep.json"], "deep.json:1: invalid JSON: "
                                                                                      "nested too deeply"),
    # eval
    "eval batch size 0": (["eval", "model", "--benchmark", "gsm8k", "--data-path", "t.txt", "--batch-size", "0"],
                          "batch-size must be an integer >= 1"),
    "eval batch size negative": (["eval", "model", "--benchmark", "gsm8k", "--data-path", "t.txt", "--batch-size",
                                  "-4"], "batch-size must be an integer >= 1"),
    "tampered prompt file": (["eval", "tampered", "--benchmark", "gsm8k", "--data-path", "t.txt"],
                             "dartlm_prompt.json: num_thought_tokens: unexpected value 'many'"),
    "prompt file edited in an export": (["eval", "edited", "--benchmark", "gsm8k", "--data-path", "t.txt"],
                                        "files changed since the export was written: dartlm_prompt.json"),
    "prompt file not JSON": (["eval", "garbled-prompt", "--benchmark", "gsm8k", "--data-path", "t.txt"],
                             "dartlm_prompt.json: not a valid prompt file"),
    "missing config.json": (["eval", "no-config", "--benchmark", "gsm8k", "--data-path", "t.txt"],
                            "files changed since the export was written: config.json"),
    "garbled config.json in a foreign folder": (["eval", "garbled-config", "--benchmark", "gsm8k", "--data-path",
                                                 "t.txt"], "cannot load the exported model"),
    "eval stream of another kind": (["eval", "model", "--benchmark", "gsm8k", "--data-path", "t.txt", "--output",
                                     "stream.json"], "stream.jsonl:1: not a dartlm eval stream"),
    # comparisons, probes, lm-eval tasks
    "empty seeds": (["compare", "--seeds", "", "--quick"], "--seeds '': expected comma-separated integers"),
    "seed twice": (["compare", "--seeds", "0,0", "--quick", "--workers", "2"], "--seeds '0,0': a value is given twice"),
    "unknown variant": (["compare", "--variants", "dart,magic", "--quick"], "unknown variant 'magic'"),
    "probe layers": (["probe", "model", "--data", "t.txt", "--output", "p", "--layers", "1,x"],
                     "--layers '1,x': expected comma-separated integers"),
    "unknown demo setting": (["demo", "--quick", "--set", "speed=fast"], "unknown demo setting 'speed'"),
    "task name outside --output": (["lm-eval-task", "model", "--benchmark", "gsm8k", "--data-path", "t.txt",
                                    "--output", "tasks", "--name", "../x"], "--name '../x': a task name is"),
    "export config.yaml not YAML": (["export", "bad-run", "out"], "config.yaml: cannot read the run's config"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_nothing_written(made, tmp_path, monkeypatch, capsys, case):
    args, message = BAD_INPUTS[case]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DARTLM_CACHE", str(tmp_path / "cache"))
    _write(tmp_path / "bad.yaml", b"model:\n  name_or_path: \xff\xfe\n")
    _write(tmp_path / "big.jsonl", json.dumps({**QUESTION, "answer": 1}).replace("1}", "7" * 5000 + "}") + "\n")
    _write(tmp_path / "deep.jsonl", "[" * 100_000 + "]" * 100_000 + "\n")
    _write(tmp_path / "deep.json", "[" + "[" * 100_000 + "]" * 100_000 + "]")
    write_arithmetic_file(tmp_path / "t.txt", count=3)
    for name in ("model", "tampered", "garbled-prompt", "no-config", "garbled-config", "edited"):
        shutil.copytree(made / "export-a", tmp_path / name)
    prompt = json.loads((tmp_path / "tampered" / "dartlm_prompt.json").read_text())
    _write(tmp_path / "edited" / "dartlm_prompt.json", json.dumps({**prompt, "num_thought_tokens": 3}))
    # Folders without a manifest (made by hand or by another tool): the prompt file itself is checked.
    (tmp_path / "tampered" / MANIFEST_FILE).unlink()
    (tmp_path / "garbled-prompt" / MANIFEST_FILE).unlink()
    _write(tmp_path / "tampered" / "dartlm_prompt.json", json.dumps({**prompt, "num_thought_tokens": "many"}))
    _write(tmp_path / "garbled-prompt" / "dartlm_prompt.json", '{"method": ')
    (tmp_path / "no-config" / "config.json").unlink()
    (tmp_path / "garbled-config" / MANIFEST_FILE).unlink()  # a folder not written by dartlm export
    _write(tmp_path / "garbled-config" / "config.json", "{ not json")
    _write(tmp_path / "stream.jsonl", "something else\n")
    shutil.copytree(made / "run-a", tmp_path / "bad-run")
    _write(tmp_path / "bad-run" / "config.yaml", "model: [")
    before = visible_files(tmp_path)

    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert visible_files(tmp_path) == before, "a refused command wrote files"


def test_old_checkpoints_are_pruned_only_after_the_new_one_is_complete(tmp_path):
    from dartlm.training.trainer import COMPLETE_MARKER, last_complete_checkpoint, prune_checkpoints

    for step, complete in ((10, True), (20, True), (25, False), (30, True), (40, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / COMPLETE_MARKER).write_text(f"{step}\n")
    prune_checkpoints(str(tmp_path), keep=2)
    # The two newest complete ones stay; an incomplete one newer than them (a save in progress) is left alone.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-20", "checkpoint-25", "checkpoint-30",
                                                          "checkpoint-40"]
    assert last_complete_checkpoint(str(tmp_path)).endswith("checkpoint-30")


def test_training_never_lets_transformers_rotate_checkpoints(made):
    from dartlm.methods import get_method
    from dartlm.training.run import load_run_config, training_arguments

    config = load_run_config(made / "run-a")
    assert config.training.save_total_limit == 2
    assert training_arguments(config, made / "run-a", get_method(config.method)).save_total_limit is None
