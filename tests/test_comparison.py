"""`dartlm compare` and `dartlm sweep` end to end on the quick settings: tables, plots, resumption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dartlm.cli import main
from dartlm.experiments.variants import GROUPS, VARIANTS, resolve_variants


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """The quick settings fine-tune a small base: build it here, not in the user's cache."""
    monkeypatch.setenv("DARTLM_CACHE", str(tmp_path / "cache"))


def test_variant_groups_cover_the_papers_tables():
    assert len(GROUPS["table1"]) == 7 and len(GROUPS["table3"]) == 7  # Table 3: DART and its six ablations
    assert all(label in VARIANTS for group in GROUPS.values() for label in group)
    assert [v.label for v in resolve_variants(["demo", "dart", "codi"])] == ["nocot", "cot", "pause", "dart", "codi"]
    assert all(VARIANTS[label].paper.startswith("ours") for label in GROUPS["guards"][2:])
    weights = {label: VARIANTS[label].overrides.get("method.distill_weight") for label in GROUPS["lambda"][2:]}
    assert weights == {"dart": None, "dart-lambda5": 5.0, "dart-lambda1": 1.0}  # dart: the settings' lambda (20)
    with pytest.raises(ValueError, match="unknown variant 'dartt'"):
        resolve_variants(["dartt"])


def test_compare_writes_table_plot_and_resumes(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--quick", "--variants", "nocot,codi,dart-lora-rem", "--seeds", "0", "--train-steps", "4",
            "--latency-items", "3", "--output-dir", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "comparison.json").read_text())
    assert list(summary["variants"]) == ["nocot", "codi", "dart-lora-rem"]
    codi = summary["variants"]["codi"]
    # Passes = prefill + one per thought + (<eot> SEP, CODI only) + one per token after the first; the token count
    # excludes eos, so passes - tokens is 0..1 for No-CoT and 7..8 for CODI's 6 thoughts.
    nocot = summary["variants"]["nocot"]
    assert 0 <= nocot["forward_passes"] - nocot["new_tokens"] <= 1
    assert 7 <= codi["forward_passes"] - codi["new_tokens"] <= 8
    scored = [json.loads(line) for line in (out / "seed-0" / "scores" / "codi-test.jsonl").read_text().splitlines()]
    items = [r for r in scored if r.get("type") == "item"]
    assert codi["accuracy_mean"] == pytest.approx(100 * sum(r["strict"] for r in items) / len(items))
    assert len(items) == summary["test_items"] and codi["latency_ms"]["n"] == 3
    assert (out / "comparison.png").stat().st_size > 0
    assert "| codi | Table 1: CODI |" in (out / "comparison.md").read_text()
    capsys.readouterr()
    assert main(args) == 0  # every result file exists: nothing is trained again
    assert "0 runs to do" in capsys.readouterr().out


def test_sweep_in_two_worker_processes(tmp_path):
    out = tmp_path / "sweep"
    assert main(["sweep", "--quick", "--values", "0,2", "--seeds", "0", "--train-steps", "3", "--workers", "2",
                 "--latency-items", "2", "--output-dir", str(out)]) == 0
    summary = json.loads((out / "comparison.json").read_text())
    assert list(summary["variants"]) == ["dart-c0", "dart-c2"]
    assert summary["variants"]["dart-c2"]["overrides"] == {"method.num_thought_tokens": 2}
    assert (out / "sweep.png").stat().st_size > 0


def test_compare_in_the_pretrained_base_regime_on_the_validation_split(tmp_path):
    import yaml

    out = tmp_path / "cmp"
    assert main(["compare", "--quick", "--variants", "nocot,dart-student", "--seeds", "0", "--train-steps", "3",
                 "--base-steps", "2", "--lora-targets", "all", "--eval-split", "val", "--latency-items", "2",
                 "--output-dir", str(out)]) == 0
    summary = json.loads((out / "comparison.json").read_text())
    assert summary["split"] == "val" and summary["settings"]["base_steps"] == 2
    assert (out / "seed-0" / "results" / "dart-student-val.json").is_file()
    assert not (out / "seed-0" / "results" / "dart-student.json").exists()  # test-split results stay apart
    terms = summary["variants"]["dart-student"]["final_terms_per_seed"][0]
    assert {"loss_cot", "loss_st", "loss_distill", "teacher_spread"} <= set(terms)
    assert "validation problems" in (out / "comparison.md").read_text()
    config = yaml.safe_load((out / "seed-0" / "runs" / "dart-student" / "config.yaml").read_text())
    # The shared base, frozen, with LoRA on attention and MLP, and the guard option of the variant.
    assert config["model"]["name_or_path"].startswith(str(tmp_path / "cache" / "models" / "arith-base-"))
    assert config["lora"]["enabled"] and "down_proj" in config["lora"]["target_modules"]
    assert config["method"]["distill_grad"] == "student"


def test_answer_variety_by_hand(tmp_path):
    from dartlm.experiments.report import answer_variety

    scores = tmp_path / "scores.jsonl"
    items = [("3", "3"), ("3", "4"), ("5", "4"), ("3", "4")]  # (prediction, target)
    lines = [json.dumps({"type": "header"})] + [json.dumps({"type": "item", "strict_prediction": p, "target": t})
                                                for p, t in items]
    scores.write_text("\n".join(lines) + "\n")
    assert answer_variety(scores) == {"distinct_answers": 2, "top_answer_share": 0.75, "frequency_baseline": 0.75}
    assert answer_variety(tmp_path / "missing.jsonl") is None


def test_compare_fine_tunes_a_given_pretrained_model(tmp_path, tokenizer):
    """--base-model: any HF folder (or hub name, or alias) as the frozen base, with its own tokenizer."""
    import yaml
    from conftest import make_model

    folder = tmp_path / "pretrained"
    make_model("llama", len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "cmp"
    assert main(["compare", "--quick", "--variants", "dart", "--seeds", "0", "--train-steps", "2",
                 "--base-model", str(folder), "--latency-items", "1", "--output-dir", str(out)]) == 0
    config = yaml.safe_load((out / "seed-0" / "runs" / "dart" / "config.yaml").read_text())
    assert config["model"]["name_or_path"] == str(folder) and config["lora"]["enabled"]
    assert not (tmp_path / "cache" / "models").exists()  # no arithmetic base was built


def test_a_killed_comparison_run_resumes_from_its_checkpoint(tmp_path, capsys):
    """--save-every writes checkpoints; a run whose result is missing but whose folder holds a complete checkpoint
    of the same config continues from it instead of starting over."""
    from dartlm.training.run import load_run_config, resumable

    out = tmp_path / "cmp"
    args = ["compare", "--quick", "--variants", "nocot", "--seeds", "0", "--train-steps", "4", "--save-every", "2",
            "--latency-items", "0", "--output-dir", str(out)]
    assert main(args) == 0
    run_dir = out / "seed-0" / "runs" / "nocot"
    config = load_run_config(run_dir)
    assert config.training.save_steps == 2 and (run_dir / "checkpoint-2").is_dir()
    assert resumable(run_dir, config)
    config.training.save_steps = 50
    assert resumable(run_dir, config)  # saving more or less often does not change what is trained
    config.training.lr *= 2
    assert not resumable(run_dir, config)  # another config: never resumed
    first = json.loads((out / "seed-0" / "results" / "nocot.json").read_text())
    (out / "seed-0" / "results" / "nocot.json").unlink()  # as if killed after the last checkpoint
    capsys.readouterr()
    assert main(args) == 0
    assert "1 runs to do" in capsys.readouterr().out
    again = json.loads((out / "seed-0" / "results" / "nocot.json").read_text())
    assert again["accuracy"] == first["accuracy"] and again["final_terms"] == first["final_terms"]


def test_a_setting_added_later_keeps_earlier_fingerprints_at_its_old_value():
    from dataclasses import asdict, replace

    from dartlm.experiments.jobs import UNTRACKED_SETTINGS, job_fingerprint
    from dartlm.experiments.settings import DemoSettings, method_config
    from dartlm.experiments.variants import VARIANTS
    from dartlm.storage import digest

    settings, variant = DemoSettings(), VARIANTS["cot"]
    # what a job written before omit_last_step existed recorded
    before = {k: v for k, v in asdict(settings).items()
              if k not in UNTRACKED_SETTINGS and k not in ("omit_last_step", "separator")}
    old = digest({"settings": before, "variant": asdict(variant), "split": "val", "data": "d", "base": "b"})
    assert job_fingerprint(settings, variant, "val", "d", "b") == old
    whole_chain = replace(settings, omit_last_step=False)
    assert job_fingerprint(whole_chain, variant, "val", "d", "b") != old
    config = method_config(whole_chain, "cot", Path("data"), Path("run"), Path("base"), 10)
    assert config.data.omit_last_step is False
    worded = replace(settings, separator="The result is")
    assert job_fingerprint(worded, variant, "val", "d", "b") != old
    assert method_config(worded, "cot", Path("data"), Path("run"), Path("base"), 10).method.separator == \
        "The result is"


def test_the_separator_setting_reaches_the_data_tokenizer_and_refuses_bad_text(tmp_path):
    from dataclasses import replace

    from dartlm.config import ConfigError
    from dartlm.experiments.data import check_data, data_identity, prepare_data
    from dartlm.experiments.settings import DemoSettings, apply_settings, method_config

    settings = apply_settings(DemoSettings.quick(), ["separator=The result is", "n_train=60", "vocab_size=300"])
    assert settings.separator == "The result is"
    # text as given, where YAML would read a mapping, a comment or a quoted string
    for given, read in (("Answer:", "Answer:"), ("####", "####"), ("The answer is:", "The answer is:"),
                        ('"Answer:"', "Answer:")):
        assert apply_settings(DemoSettings(), [f"separator={given}"]).separator == read
    assert "separator" not in data_identity(replace(settings, separator="Answer:"))  # older folders stay valid
    prepare_data(settings, tmp_path / "data")
    check_data(settings, tmp_path / "data")
    with pytest.raises(ConfigError, match="separator"):  # a folder made for one separator is not reused for another
        check_data(replace(settings, separator="Answer:"), tmp_path / "data")
    for bad in ("   ", "Step 3:"):
        with pytest.raises(ConfigError, match="method.separator must be non-blank text without digits"):
            method_config(replace(settings, separator=bad), "cot", Path("data"), Path("run"), Path("base"), 10)


def test_a_comparison_says_when_its_jobs_ran_on_several_machines():
    from dartlm.eval.latency import not_timed
    from dartlm.experiments.report import comparison_table, summarize_comparison
    from dartlm.experiments.settings import DemoSettings
    from dartlm.experiments.variants import VARIANTS

    here = {"cpu": "AMD EPYC", "cpu_capability": "AVX2"}
    other = {"cpu": "AMD EPYC", "cpu_capability": "AVX512"}
    results = {"nocot": [{"accuracy": 0.1, "train_s": 1.0, "n": 200, "machine": here},
                         {"accuracy": 0.2, "train_s": 1.0, "n": 200, "machine": other}]}
    summary = summarize_comparison([VARIANTS["nocot"]], results, not_timed(["nocot"]), DemoSettings(), [0, 1])
    assert summary["job_machines"] == ["AMD EPYC (AVX2)", "AMD EPYC (AVX512)"]
    assert "**The jobs trained on 2 different machines** (AMD EPYC (AVX2); AMD EPYC (AVX512))" in \
        comparison_table(summary)
    results["nocot"][1]["machine"] = here
    summary = summarize_comparison([VARIANTS["nocot"]], results, not_timed(["nocot"]), DemoSettings(), [0, 1])
    assert summary["job_machines"] == ["AMD EPYC (AVX2)"] and "different machines" not in comparison_table(summary)
    del results["nocot"][0]["machine"]  # a result written before machines were recorded
    summary = summarize_comparison([VARIANTS["nocot"]], results, not_timed(["nocot"]), DemoSettings(), [0, 1])
    assert summary["job_machines"] == ["AMD EPYC (AVX2)", "unrecorded"]


def _write_scores(path: Path, outcomes: list[bool]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"type": "header"})] + [json.dumps({"type": "item", "id": f"q{i}", "strict": ok, "target": "1",
                                                            "strict_prediction": "1" if ok else "2"})
                                                for i, ok in enumerate(outcomes)]
    path.write_text("\n".join(lines) + "\n")


def test_paired_differences_and_sign_test_by_hand(tmp_path):
    from dartlm.experiments.report import comparison_table, paired_differences, sign_test_p, summarize_comparison
    from dartlm.eval.latency import not_timed
    from dartlm.experiments.settings import DemoSettings

    # 6 items only the first got right, 1 only the second: P(X <= 1 | n = 7, 1/2) = 8/128, two-sided 0.125.
    assert sign_test_p(6, 1) == pytest.approx(0.125)
    assert sign_test_p(0, 0) == 1.0 and sign_test_p(3, 3) == 1.0  # no discordant items; an even split
    assert sign_test_p(5, 0) == pytest.approx(2 / 32)
    # Seed 0: dart right on items 0-3, nocot on 2-4 (dart only: 0, 1; nocot only: 4). Seed 1: the same on items 0-1.
    _write_scores(tmp_path / "seed-0" / "scores" / "dart-test.jsonl", [True, True, True, True, False])
    _write_scores(tmp_path / "seed-0" / "scores" / "nocot-test.jsonl", [False, False, True, True, True])
    _write_scores(tmp_path / "seed-1" / "scores" / "dart-test.jsonl", [True, False, False, False, False])
    _write_scores(tmp_path / "seed-1" / "scores" / "nocot-test.jsonl", [True, False, False, False, False])
    variants = [VARIANTS["nocot"], VARIANTS["dart"]]
    (pair,) = paired_differences(variants, tmp_path, [0, 1], "test")  # each pair once, DART first
    assert (pair["first"], pair["second"], pair["items"]) == ("dart", "nocot", 10)
    assert (pair["first_only"], pair["second_only"], pair["seeds_first_ahead"]) == (2, 1, 1)
    assert pair["difference"] == pytest.approx(10.0) and pair["sign_test_p"] == pytest.approx(1.0)  # 2 vs 1
    assert [s["first_only"] for s in pair["per_seed"]] == [2, 0]
    # A variant without scores on a seed gives no pair rather than a pair over fewer items.
    assert paired_differences(variants, tmp_path, [0, 1, 2], "test") == []
    results = {v.label: [{"accuracy": 0.5, "train_s": 1.0, "n": 5}] * 2 for v in variants}
    summary = summarize_comparison(variants, results, not_timed(["nocot", "dart"]), DemoSettings(), [0, 1], tmp_path)
    assert "| dart − nocot | +10.0 | 2 / 1 | 1 | 1 of 2 |" in comparison_table(summary)


def test_a_comparison_over_seeds_lists_every_runs_loss_terms_and_answers(tmp_path):
    from dartlm.experiments.report import comparison_table, summarize_comparison
    from dartlm.eval.latency import not_timed
    from dartlm.experiments.settings import DemoSettings

    # Seed 1's DART answers one constant: the mean over seeds (2.5 distinct answers) hides it, the run's row shows it.
    _write_scores(tmp_path / "seed-0" / "scores" / "dart-test.jsonl", [True, True, False, False])
    (tmp_path / "seed-1" / "scores").mkdir(parents=True)
    (tmp_path / "seed-1" / "scores" / "dart-test.jsonl").write_text("\n".join(
        json.dumps({"type": "item", "id": f"q{i}", "strict": i == 0, "target": str(i), "strict_prediction": "0"})
        for i in range(4)) + "\n")
    results = {"dart": [{"accuracy": 0.5, "train_s": 1.0, "n": 4,
                         "final_terms": {"loss": 1.5, "loss_cot": 0.25, "loss_st": 0.75, "loss_distill": 0.0625,
                                         "teacher_spread": 0.125}},
                        {"accuracy": 0.25, "train_s": 1.0, "n": 4, "final_terms": {"loss": 2.0, "loss_st": 0.875}}]}
    summary = summarize_comparison([VARIANTS["dart"]], results, not_timed(["dart"]), DemoSettings(), [0, 1], tmp_path)
    table = comparison_table(summary)
    assert "| dart | 0 | 50.0 | 1.5 | 0.25 | 0.75 | 0.0625 | 0.125 | 2 | 50.0 |" in table
    assert "| dart | 1 | 25.0 | 2 | – | 0.875 | – | – | 1 | 100.0 |" in table
    # One seed: the mean is the run, so no second table.
    one = summarize_comparison([VARIANTS["dart"]], {"dart": results["dart"][:1]}, not_timed(["dart"]), DemoSettings(),
                               [0], tmp_path)
    assert "run by run" not in comparison_table(one)
