"""The shipped Accelerate configs (FSDP2, DeepSpeed ZeRO-2/3) and the checks `dartlm train` makes under them."""

from __future__ import annotations

import logging

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from dartlm import launch
from dartlm.config import Config, ConfigError, load_config
from dartlm.training.sharding import check_deepspeed_fields, check_sharding, sharding_mode

DEEPSPEED = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
             "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "1", "ACCELERATE_GRADIENT_CLIPPING": "2.0"}


@pytest.mark.parametrize("name,kind", [("fsdp", "FSDP"), ("deepspeed-zero2", "DEEPSPEED"),
                                       ("deepspeed-zero3", "DEEPSPEED")])
def test_shipped_configs_load_in_accelerate(name, kind):
    config = load_config_from_file(str(launch.path(name)))  # accelerate's own loader: unknown keys are errors
    assert config.distributed_type == kind and not config.use_cpu
    if kind == "FSDP":
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"  # by decoder layer
        assert config.fsdp_config["fsdp_reshard_after_forward"] is True  # full shard
    else:
        assert config.deepspeed_config["zero_stage"] == int(name[-1])
        # The paper configs with the launch line's overrides agree with the DeepSpeed fields.
        paper = load_config("paper/llama-3.2-1b-dart", ["training.grad_accum=1"])
        env = {**DEEPSPEED, "ACCELERATE_GRADIENT_CLIPPING": str(config.deepspeed_config["gradient_clipping"]),
               "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": str(config.deepspeed_config["gradient_accumulation_steps"])}
        check_deepspeed_fields(paper, env)  # raises on a mismatch (tested below)


def test_deepspeed_is_refused_without_cuda_and_with_mismatched_fields():
    config = Config()
    config.training.grad_accum, config.training.max_grad_norm = 1, 2.0
    assert sharding_mode(DEEPSPEED) == "deepspeed" and sharding_mode({}) == ""
    with pytest.raises(ConfigError, match=r"DeepSpeed \(ZeRO-3\) needs CUDA GPUs"):
        check_sharding(config, DEEPSPEED, cuda=False)
    with pytest.raises(ConfigError, match="training.grad_accum is 1 but .*gradient_accumulation_steps is 4"):
        check_sharding(config, {**DEEPSPEED, "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"}, cuda=True)
    with pytest.raises(ConfigError, match="training.max_grad_norm is 2 but .*gradient_clipping is 1.0"):
        check_sharding(config, {**DEEPSPEED, "ACCELERATE_GRADIENT_CLIPPING": "1.0"}, cuda=True)


def test_routing_into_rem_is_refused_under_sharding_and_fsdp_on_cpu_warns(caplog):
    config = Config()
    config.method.distill_grad = "student"
    with pytest.raises(ConfigError, match="distill_grad=student is not supported under fsdp"):
        check_sharding(config, {"ACCELERATE_USE_FSDP": "true"}, cuda=True)
    config.method.distill_grad = "all"
    with caplog.at_level(logging.WARNING):
        assert check_sharding(config, {"ACCELERATE_USE_FSDP": "true"}, cuda=False) == "fsdp"
    assert "Accelerate runs CPU processes as DDP" in caplog.text
    assert check_sharding(config, {}, cuda=False) == ""


def test_dartlm_train_stops_before_loading_anything_under_deepspeed_on_cpu(tmp_path, train_file, monkeypatch):
    from dartlm.training.run import train

    for key, value in DEEPSPEED.items():
        monkeypatch.setenv(key, value)
    config = load_config("tiny/dart", [f"data.train_path={train_file}", "training.max_grad_norm=2.0"])
    with pytest.raises(ConfigError, match="needs CUDA GPUs"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
