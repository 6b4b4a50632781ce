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
    for method in ("quiet-star", "fast-quiet-star"):
        own = load_config(f"paper/llama-3.2-1b-{method}").method.settings
        assert (own.quiet_n_ahead, own.quiet_n_talk, own.quiet_policy_weight) == (12, 4, 1e6)  # the public script's
    assert load_config("paper/llama-3.2-1b-fqs-ntp").method.settings.ntp_policy_weight == 1e6
    assert load_config("paper/llama-3.2-1b-fast-quiet-star").method.settings.fqs_stages == [[16, 8], [12, 4], [8, 4]]


def test_baseline_configs_keep_the_shared_llama_settings():
    cot = load_config("paper/llama-3.2-1b-cot")
    for method in ("icot", "coconut", "codi"):
        config = load_config(f"paper/llama-3.2-1b-{method}")
        assert config.model == cot.model and config.lora == cot.lora and config.data == cot.data
        assert (config.training.lr, config.training.batch_size * config.training.grad_accum) == (8e-4, 128)
    codi = load_config("paper/llama-3.2-1b-codi")
    assert (codi.method.num_thought_tokens, codi.method.distill_weight) == (6, 20.0)
    assert load_config("paper/llama-3.2-1b-icot").method.settings.icot_remove_all_after == 39  # iCoT's GSM8K threshold


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
    assert (config.training.lr, config.method.settings.quiet_policy_weight) == (1e-4, 1e6)
    with pytest.raises(ConfigError, match="training.lr: expected float"):
        load_config("tiny/dart", ["training.lr=fast"])


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_a_setting_of_another_method_is_named_with_its_owner(tmp_path):
    path = write(tmp_path / "c.yaml", "inherit: tiny/dart\nmethod:\n  icot_smoothing: 1.0\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: method\.icot_smoothing: a setting of method icot, not of dart"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) method\.quiet_ahead \(known for method quiet-star: "
                                          r".*quiet_n_ahead"):
        load_config(write(tmp_path / "q.yaml", "inherit: tiny/quiet-star\nmethod:\n  quiet_ahead: 3\n"))
    config = load_config("tiny/dart")
    with pytest.raises(ConfigError, match=r"method\.coconut_max_stages: a setting of method coconut, not of dart"):
        config.set("method.coconut_max_stages", 2)


def test_a_run_config_written_before_the_split_still_loads(tmp_path):
    """Run folders list every method's fields (at their defaults where unused); those are ignored."""
    old = load_config("tiny/icot")
    method = {"name": "icot", "num_thought_tokens": 4, "separator": "Answer:", "icot_tokens_per_epoch": 2.0,
              "icot_smoothing": 4.0, "icot_remove_all_after": -1, "coconut_thoughts_per_step": 2,
              "coconut_max_stages": 3, "coconut_epochs_per_stage": 3.0, "quiet_n_ahead": 12, "quiet_n_talk": 4,
              "fqs_stages": [[16, 8], [12, 4], [8, 4]], "ntp_teacher": "", "ntp_policy_weight": 1.0e6}
    import yaml

    from dartlm.config import to_dict

    raw = to_dict(old)
    raw["method"] = method
    config = load_config(write(tmp_path / "config.yaml", yaml.safe_dump(raw)))
    assert config.method.settings.icot_tokens_per_epoch == 2.0
    assert "coconut_max_stages" not in to_dict(config)["method"]  # written back with its own settings only


def test_changing_the_method_in_an_inheriting_config_drops_the_parents_own_settings(tmp_path):
    # tiny/quiet-star sets quiet_n_ahead 4; Fast Quiet-STaR shares Quiet-STaR's settings, keeps it, adds its stages
    fast = load_config(write(tmp_path / "f.yaml", "inherit: tiny/quiet-star\nmethod:\n  name: fast-quiet-star\n"))
    assert fast.method.settings.quiet_n_ahead == 4 and fast.method.settings.fqs_stages == [[16, 8], [12, 4], [8, 4]]
    dart = load_config(write(tmp_path / "d.yaml", "inherit: tiny/quiet-star\nmethod:\n  name: dart\n"))
    assert dart.method.settings is None and dart.method.name == "dart"


def test_setting_the_method_name_brings_that_methods_settings():
    config = load_config("tiny/dart")
    config.set("method.name", "coconut")
    config.set("method.coconut_max_stages", 2)
    assert config.method.settings.coconut_max_stages == 2
    with pytest.raises(ConfigError, match=r"method\.coconut_thoughts_per_step and method\.coconut_max_stages must "
                                          r"be >= 1"):
        config.set("method.coconut_max_stages", 0)
        config.validate()
