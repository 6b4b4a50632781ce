"""The stability study's DART stage (benchmarks/stability.py): its verdict and the elimination that saves runs."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "stability.py"


@pytest.fixture(scope="module")
def stability():
    spec = importlib.util.spec_from_file_location("stability_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_result(stability, out: Path, base_seed: int, seed: int, label: str, accuracy: float) -> None:
    folder = stability.run_dir(out, "s", base_seed, "dart") / f"seed-{seed}" / "results"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{label}-val.json").write_text(json.dumps(
        {"label": label, "seed": seed, "split": "val", "accuracy": accuracy / 100, "final_terms": {"loss": 1.0}}))


def test_a_candidate_is_out_after_one_lost_run_and_the_verdict_waits_for_the_others(stability, tmp_path):
    write_result(stability, tmp_path, 1, 0, "nocot", 17.0)
    write_result(stability, tmp_path, 1, 0, "pause", 15.0)
    write_result(stability, tmp_path, 1, 0, "dart", 17.0)  # a tie with the better reference is a loss
    write_result(stability, tmp_path, 1, 0, "dart-delayed", 18.0)
    assert stability.lost_runs(stability.dart_results(tmp_path, "s")) == {"dart": ["b1s0"]}
    result = stability.judge_dart(tmp_path, "s")
    assert not result["decided"] and result["chosen"] is None
    assert result["variants"]["dart"]["lost_on"] == ["b1s0"]
    assert result["variants"]["dart-delayed"]["min_margin"] == pytest.approx(1.0)
    assert "not decided yet" in stability.dart_table(result)
    # The delayed candidate loses the next run: every candidate trained is out, the verdict is final.
    write_result(stability, tmp_path, 1, 1, "nocot", 14.0)
    write_result(stability, tmp_path, 1, 1, "pause", 20.0)
    write_result(stability, tmp_path, 1, 1, "dart-delayed", 19.5)
    result = stability.judge_dart(tmp_path, "s")
    assert result["decided"] and result["chosen"] is None
    assert result["variants"]["dart-delayed"]["lost_on"] == ["b1s1"]
    assert result["variants"]["dart-delayed"]["per_run"] == {"b1s0": 18.0, "b1s1": 19.5}


def test_a_candidate_that_wins_all_six_runs_is_chosen(stability, tmp_path):
    for base_seed in stability.BASE_SEEDS:
        for seed in stability.SEEDS:
            write_result(stability, tmp_path, base_seed, seed, "nocot", 10.0)
            write_result(stability, tmp_path, base_seed, seed, "pause", 12.0)
            write_result(stability, tmp_path, base_seed, seed, "dart-student", 15.0 + seed)
            write_result(stability, tmp_path, base_seed, seed, "dart", 12.0 if seed == 2 else 30.0)
    result = stability.judge_dart(tmp_path, "s")
    assert result["decided"] and result["chosen"] == "dart-student"
    assert result["variants"]["dart-student"]["min_margin"] == pytest.approx(3.0)
    assert result["variants"]["dart"]["lost_on"] == ["b0s2", "b1s2"]


def test_elimination_stops_training_a_candidate_once_it_lost(stability, tmp_path, monkeypatch):
    trained = []
    figures = {(1, 0): {"nocot": 17.0, "pause": 15.0, "dart": 10.0, "dart-delayed": 18.0},
               (1, 1): {"nocot": 14.0, "pause": 20.0, "dart-delayed": 19.0}}

    def fake_comparison(variants, settings, seeds, folder, **kwargs):
        for variant in variants:
            trained.append((settings.base_seed, seeds[0], variant.label))
            write_result(stability, tmp_path, settings.base_seed, seeds[0], variant.label,
                         figures[(settings.base_seed, seeds[0])][variant.label])

    monkeypatch.setattr(stability, "run_comparison", fake_comparison)
    monkeypatch.setitem(stability.SETTINGS, "s", [])
    stability.run_eliminating(tmp_path, "s", [0, 1, 2], (1, 0), ["dart", "dart-delayed"], 1, 0, 1)
    assert trained == [(1, 0, "nocot"), (1, 0, "pause"), (1, 0, "dart"), (1, 0, "dart-delayed"),
                       (1, 1, "nocot"), (1, 1, "pause"), (1, 1, "dart-delayed")]  # then nothing is left to train


def test_the_archive_keeps_the_study_s_bases_and_restore_puts_them_back(stability, tmp_path, monkeypatch):
    from dartlm.experiments.settings import base_spec
    from dartlm.model.base_lm import ensure_base
    from dartlm.storage import file_hashes

    monkeypatch.setenv("DARTLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(stability.SETTINGS, "s", ["base_steps=2", "layers=1", "hidden=32", "heads=2"])
    monkeypatch.setattr(stability, "BASE_SEEDS", (0,))
    spec = base_spec(stability.setting("s", 0, 0))
    built = ensure_base(spec, log=lambda *_: None)
    write_result(stability, tmp_path / "study", 0, 0, "nocot", 10.0)
    (tmp_path / "study" / "dart-s" / "base-0" / "seed-0" / "scores").mkdir()
    (tmp_path / "study" / "dart-s" / "base-0" / "seed-0" / "scores" / "nocot-val.jsonl").write_text("{}\n")
    assert stability.archive(tmp_path / "study", tmp_path / "kept", ["s"], with_bases=True) == 2
    hashes = file_hashes(built)
    shutil.rmtree(built)
    assert stability.restore(tmp_path / "kept", tmp_path / "elsewhere") == 2
    assert {k: v for k, v in file_hashes(built).items() if k != "dartlm_shipped.json"} == hashes
    assert (tmp_path / "elsewhere" / "dart-s" / "base-0" / "seed-0" / "results" / "nocot-val.json").is_file()


def test_a_tie_between_winners_goes_to_the_larger_lambda(stability, tmp_path):
    for base_seed in stability.BASE_SEEDS:
        for seed in stability.SEEDS:
            write_result(stability, tmp_path, base_seed, seed, "nocot", 10.0)
            write_result(stability, tmp_path, base_seed, seed, "pause", 12.0)
            write_result(stability, tmp_path, base_seed, seed, "dart-lambda1", 15.5)
            write_result(stability, tmp_path, base_seed, seed, "dart-lambda5", 15.0)
    result = stability.judge_dart(tmp_path, "s")
    assert result["candidates_trained"] == ["dart-lambda5", "dart-lambda1"]
    assert result["decided"] and result["chosen"] == "dart-lambda5"  # 3.0 against 3.5: within 1 point
