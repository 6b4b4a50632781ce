"""dartlm bench on a tiny model: the variants, pinned decode lengths, and the training measurements."""

from __future__ import annotations

import pytest
import torch

from dartlm.experiments.bench import bench_inference, bench_training, inference_table, pinned_lengths, training_table
from dartlm.config import load_config
from dartlm.data.example import Example
from dartlm.eval.measure import PeakMemory
from dartlm.model.loading import load_tokenizer

EXAMPLES = [
    Example("Tom has 12 apples and buys 30 more. How many apples?", ("<<12+30=42>>",), "42"),
    Example("Ann had 40 dollars and spent 9. Then she earned 25. How much now?", ("<<40-9=31>>", "<<31+25=56>>"), "56"),
    Example("What is 5 less than 30?", ("<<30-5=25>>",), "25"),
]


@pytest.fixture(scope="module")
def config():
    return load_config("tiny/dart")


def test_inference_bench_pins_lengths_and_compares_every_variant(config):
    result = bench_inference(config, EXAMPLES, num_thoughts=4, warmup=1, progress=False)
    variants = result["variants"]
    assert set(variants) == {"nocot", "pause", "dart (merged)", "dart (adapters, unmerged)", "cot"}
    tokenizer = load_tokenizer(config.model)
    lengths = [pinned_lengths(e, tokenizer, "Answer:") for e in EXAMPLES]
    assert variants["cot"]["new_tokens"] == pytest.approx(sum(l["cot"] for l in lengths) / 3)
    for name in ("nocot", "pause", "dart (merged)"):
        assert variants[name]["new_tokens"] == pytest.approx(sum(l["answer"] for l in lengths) / 3)
        assert variants[name]["latency_ms"]["n"] == 3
    # DART and PauseFT prompts are the same length: C thought tokens more than No-CoT.
    assert variants["dart (merged)"]["prompt_tokens"] == variants["pause"]["prompt_tokens"]
    assert variants["dart (merged)"]["prompt_tokens"] == variants["nocot"]["prompt_tokens"] + 4
    assert result["ratios"]["cot_vs_dart"]["ratio_of_medians"] > 0
    # FLOPs of one sample: merged DART costs exactly PauseFT's (same shapes), CoT more (it writes the CoT).
    assert variants["dart (merged)"]["flops_per_sample"] == variants["pause"]["flops_per_sample"] > 0
    assert variants["cot"]["flops_per_sample"] > variants["nocot"]["flops_per_sample"]
    assert variants["dart (adapters, unmerged)"]["flops_per_sample"] > variants["dart (merged)"]["flops_per_sample"]
    assert {v["memory_kind"] for v in variants.values()} == {PeakMemory("cpu").kind}
    assert "dart_vs_nocot" in inference_table(result)


def test_training_bench_counts_flops_and_memory(config):
    result = bench_training(config, EXAMPLES, batch_size=2, steps=2, warmup=1, progress=False)
    methods = result["methods"]
    # DART runs the CoT pathway and the (shorter) ST pathway: more FLOPs than CoT alone, less than twice.
    assert methods["cot"]["flops_per_step"] < methods["dart"]["flops_per_step"] < 2 * methods["cot"]["flops_per_step"]
    assert methods["nocot"]["flops_per_step"] < methods["cot"]["flops_per_step"]
    for name in ("dart", "cot", "nocot"):
        memory = methods[name]["peak_memory"]
        assert memory["peak_bytes"] >= memory["loaded_bytes"] > 0
    assert "dart_vs_cot" in result["ratios"]
    assert "GFLOPs" in training_table(result)


def test_peak_memory_sees_what_a_phase_allocates_after_a_larger_earlier_peak():
    """The working-memory figure is the peak above the footprint at reset: an earlier, larger peak (a model load)
    must not hide a phase's allocation."""
    earlier = torch.ones(96 * 2**20 // 4)  # 96 MiB, then freed: the process's high-water mark so far
    del earlier
    meter = PeakMemory("cpu")
    meter.reset()
    before = meter.peak_bytes()
    block = torch.ones(32 * 2**20 // 4)  # 32 MiB, written
    grown = meter.peak_bytes() - before
    del block
    assert 31 * 2**20 <= grown <= 40 * 2**20


def test_bench_command_writes_the_result_and_its_table(tmp_path, capsys):
    import json

    from dartlm.cli import main

    from conftest import write_arithmetic_file

    data = tmp_path / "questions.txt"
    write_arithmetic_file(data, count=2, seed=3)
    out = tmp_path / "bench.json"
    assert main(["bench", "inference", "--config", "tiny/dart", "--data-path", str(data), "--limit", "2",
                 "--num-thought-tokens", "2", "--device", "cpu", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n"] == 2 and result["num_thought_tokens"] == 2 and result["settings"]["kind"] == "inference"
    assert result["variants"]["dart (merged)"]["prompt_tokens"] == result["variants"]["nocot"]["prompt_tokens"] + 2
    assert "dart_vs_nocot" in out.with_suffix(".md").read_text() and "dart_vs_nocot" in capsys.readouterr().out
