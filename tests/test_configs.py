"""Every shipped config loads, validates and describes a model the parameter report can build."""

from __future__ import annotations

import pytest

from dartlm.config import PACKAGED_CONFIGS, ConfigError, load_config
from dartlm.params import parameter_report

SHIPPED = sorted(str(p.relative_to(PACKAGED_CONFIGS).with_suffix("")) for p in PACKAGED_CONFIGS.rglob("*.yaml"))


def test_every_paper_setting_is_shipped():
    for model in ("llama-3.2-1b", "llama-3.2-3b", "qwen2.5-1.5b", "gpt2"):
        for method in ("dart", "cot", "nocot", "pause"):
            assert f"paper/{model}-{method}" in SHIPPED
    for method in ("icot", "coconut", "codi"):  # the rest of Table 1, run on Llama-3.2-1B in the paper
        assert f"paper/llama-3.2-1b-{method}" in SHIPPED
    for method in ("dart", "cot", "nocot", "pause", "icot", "coconut", "codi", "quiet-star", "fast-quiet-star",
                   "fqs-ntp"):
        assert f"tiny/{method}" in SHIPPED
    for method in ("quiet-star", "fast-quiet-star", "fqs-ntp"):  # the token-level-thought family, same pipeline
        assert f"paper/llama-3.2-1b-{method}" in SHIPPED
        config = load_config(f"paper/llama-3.2-1b-{method}")
        assert (config.method.quiet_n_ahead, config.method.quiet_n_talk, config.method.quiet_policy_weight) == \
            (12, 4, 1e6)  # the public training script's
    assert load_config("paper/llama-3.2-1b-fast-quiet-star").method.fqs_stages == [[16, 8], [12, 4], [8, 4]]


def test_baseline_configs_keep_the_shared_llama_settings():
    cot = load_config("paper/llama-3.2-1b-cot")
    for method in ("icot", "coconut", "codi"):
        config = load_config(f"paper/llama-3.2-1b-{method}")
        assert config.model == cot.model and config.lora == cot.lora and config.data == cot.data
        assert (config.training.lr, config.training.batch_size * config.training.grad_accum) == (8e-4, 128)
    codi = load_config("paper/llama-3.2-1b-codi")
    assert (codi.method.num_thought_tokens, codi.method.distill_weight) == (6, 20.0)
    assert load_config("paper/llama-3.2-1b-icot").method.icot_remove_all_after == 39  # iCoT's GSM8K threshold


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_loads(name):
    config = load_config(name)
    assert config.method.name in name
    report = parameter_report(config)
    assert report.trainable > 0 or not config.lora.enabled
    assert (report.rem > 0) == (config.method.name == "dart" and config.rem.enabled)


ABLATIONS = {  # Table 3 of the paper: config -> the one thing it changes
    "no-st": ("method.num_thought_tokens", 0),
    "no-rem": ("rem.enabled", False),
    "lora-rem": ("rem.placement", "output"),
    "no-distill": ("method.distill_weight", 0.0),
    "distill-y1": ("method.distill_at", "y_1"),
    "distill-zn-answer": ("method.distill_at", "z_n_and_answer"),
}


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_each_ablation_changes_one_setting_of_the_dart_config(ablation):
    dart = load_config("paper/llama-3.2-1b-dart")
    variant = load_config(f"paper/ablations/llama-3.2-1b-dart-{ablation}")
    key, value = ABLATIONS[ablation]
    section, field = key.split(".")
    assert getattr(getattr(variant, section), field) == value != getattr(getattr(dart, section), field)
    differing = {
        f"{s}.{f}" for s in ("model", "lora", "rem", "method", "data")
        for f in vars(getattr(dart, s)) if getattr(getattr(dart, s), f) != getattr(getattr(variant, s), f)
    }
    assert differing == {key}
    assert variant.training.output_dir.endswith(ablation) and variant.training.lr == dart.training.lr


def test_inherit_merges_sections_key_by_key_and_refuses_cycles(tmp_path):
    parent = tmp_path / "parent.yaml"
    parent.write_text("inherit: tiny/dart\nmethod:\n  distill_weight: 5.0\n")
    child = tmp_path / "child.yaml"
    child.write_text("inherit: parent.yaml\nmethod:\n  num_thought_tokens: 3\n")
    config = load_config(child)
    assert (config.method.distill_weight, config.method.num_thought_tokens) == (5.0, 3)
    assert config.method.name == "dart" and config.model.architecture == load_config("tiny/dart").model.architecture
    parent.write_text("inherit: child.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(child)


def test_numbers_that_yaml_reads_as_text_still_set_a_float_field():
    # YAML 1.1 reads 1e-4 (no dot) and 1.0e6 (an unsigned exponent) as strings
    config = load_config("tiny/quiet-star", ["training.lr=1e-4", "method.quiet_policy_weight=1.0e6"])
    assert (config.training.lr, config.method.quiet_policy_weight) == (1e-4, 1e6)
    with pytest.raises(ConfigError, match="training.lr: expected float"):
        load_config("tiny/dart", ["training.lr=fast"])
