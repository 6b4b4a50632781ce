"""Every shipped config loads, validates and describes a model the parameter report can build."""

from __future__ import annotations

import pytest

from dartlm.config import PACKAGED_CONFIGS, load_config
from dartlm.params import parameter_report

SHIPPED = sorted(str(p.relative_to(PACKAGED_CONFIGS).with_suffix("")) for p in PACKAGED_CONFIGS.rglob("*.yaml"))


def test_every_paper_setting_is_shipped():
    for model in ("llama-3.2-1b", "llama-3.2-3b", "qwen2.5-1.5b", "gpt2"):
        for method in ("dart", "cot", "nocot", "pause"):
            assert f"paper/{model}-{method}" in SHIPPED
    for method in ("dart", "cot", "nocot", "pause"):
        assert f"tiny/{method}" in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_loads(name):
    config = load_config(name)
    assert config.method.name in name
    report = parameter_report(config)
    assert report.trainable > 0 or not config.lora.enabled
    assert (report.rem > 0) == (config.method.name == "dart")
