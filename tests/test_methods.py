"""Each method: its layout, and that one optimizer step changes exactly what it trains."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import make_model
from test_dart_objective import EXAMPLES
from dartlm.config import Config, load_config
from dartlm.data.layout import ANSWER, REASONING
from dartlm.methods import METHODS, get_method
from dartlm.training.prepare import prepare_model


def prepared(name: str, tokenizer, *, lora: bool = True):
    config = Config()
    config.set("method.name", name)
    config.method.num_thought_tokens = 3
    config.lora.enabled = lora
    config.lora.rank = config.rem.rank = 4
    method = get_method(config.method)
    tok = copy.deepcopy(tokenizer)
    model, thought_id = prepare_model(make_model("llama", len(tokenizer)), tok, config, method)
    features = [method.encode(e, tok, thought_id) for e in EXAMPLES]
    return model, method, method.collate(features, tok.pad_token_id), tok, thought_id


def changed_after_one_step(model, method, batch) -> set[str]:
    model.train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss, _ = method.loss(model, batch)
    loss.backward()
    optimizer.step()
    return {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}


# fqs-ntp needs an exported teacher: tests/test_quiet_star.py trains it with one
@pytest.mark.parametrize("name", [m for m in METHODS if m != "fqs-ntp"])
def test_one_step_changes_exactly_what_the_method_trains(name, tokenizer):
    model, method, batch, _, _ = prepared(name, tokenizer)
    if name in ("coconut", "icot"):
            method.set_progress(3.0, 0)  # Coconut stage 1 (3 epochs per stage); iCoT removes 3 x 8 tokens
    changed = changed_after_one_step(model, method, batch)
    lora = {n for n, _ in model.named_parameters() if "lora_" in n}
    rem = {n for n, _ in model.named_parameters() if ".rem" in n}
    projection = {n for n, _ in model.named_parameters() if n.startswith("latent_projection.")}
    assert lora
    assert bool(rem) == (name == "dart")
    assert bool(projection) == (name == "codi")
    head = {n for n, _ in model.named_parameters() if n.startswith("quiet_head.")}
    assert bool(head) == ("quiet-star" in name)
    if head:
        # the mixer's output layer starts at 0, so its inner layers (and the end-of-thought embedding) get no
        # gradient on the first step; the output layer always does
        assert lora <= changed <= lora | head and "quiet_head.mixer.4.weight" in changed
        return
    assert changed == lora | rem | projection


def test_full_fine_tuning_trains_every_weight(tokenizer):
    model, method, batch, _, _ = prepared("nocot", tokenizer, lora=False)
    changed = changed_after_one_step(model, method, batch)
    assert changed == {n for n, _ in model.named_parameters()}


def test_layouts_of_the_baselines(tokenizer):
    _, _, cot, _, _ = prepared("cot", tokenizer)
    _, _, nocot, _, _ = prepared("nocot", tokenizer)
    _, _, pause, tok, pause_id = prepared("pause", tokenizer)
    # CoT supervises reasoning and answer; No-CoT and PauseFT only the answer.
    assert (cot["roles"] == REASONING).any() and (cot["roles"] == ANSWER).any()
    for batch in (nocot, pause):
        assert not (batch["roles"] == REASONING).any()
        assert (batch["roles"] == ANSWER).sum() == (cot["roles"] == ANSWER).sum()
    # PauseFT is No-CoT with exactly C pause tokens per row.
    assert ((pause["input_ids"] == pause_id).sum(dim=1) == 3).all()
    assert pause["input_ids"].shape[1] == nocot["input_ids"].shape[1] + 3
    assert tok.convert_ids_to_tokens(pause_id) == "<pause>"


def test_unknown_method_lists_the_available_ones():
    from dartlm.config import ConfigError

    with pytest.raises(ConfigError, match="available: dart, cot, nocot, pause"):
        load_config("tiny/dart", ["method.name=coconutt"])
