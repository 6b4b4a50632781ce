"""The parameter report (meta device) and the config loader behind it."""

from __future__ import annotations

import pytest

from dartlm.cli import main
from dartlm.config import ConfigError, load_config
from dartlm.params import parameter_report


def test_llama_3_2_1b_matches_the_paper():
    report = parameter_report(load_config("paper/llama-3.2-1b-dart"))
    assert report.lora == 27_262_976
    assert report.rem == 16_777_216
    assert report.trainable == 44_040_192
    assert report.base == 1_235_814_400


def test_cli_prints_the_breakdown(capsys):
    assert main(["params", "paper/llama-3.2-1b-dart"]) == 0
    out = capsys.readouterr().out
    assert "27,262,976" in out and "16,777,216" in out and "44,040,192" in out


def test_overrides_change_the_count():
    half = parameter_report(load_config("paper/llama-3.2-1b-dart", ["rem.rank=64"]))
    assert half.rem == 16_777_216 // 2


@pytest.mark.parametrize(
    "override, message",
    [
        ("rem.rnak=3", "unknown key"),
        ("lora.rank=abc", "lora.rank: expected int"),
        ("method.num_thought_tokens=-1", "num_thought_tokens must be >= 0"),
        ("norank", "expected section.key=value"),
    ],
)
def test_bad_overrides_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("paper/llama-3.2-1b-dart", [override])


def test_unknown_config_name_lists_the_packaged_ones(capsys):
    assert main(["params", "no-such-config"]) == 2
    assert "paper/llama-3.2-1b-dart" in capsys.readouterr().err
