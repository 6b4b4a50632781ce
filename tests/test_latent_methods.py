"""iCoT, Coconut and CODI: curricula, layouts, and decoding that is the same with or without the KV cache and
batched or one by one, under left padding."""

from __future__ import annotations

import random

import pytest
import torch

from test_methods import prepared
from dartlm.data.layout import ANSWER, REASONING
from dartlm.thinking.decoding import SequenceRunner
from dartlm.generate import decode_prompts, prompt_ids
from dartlm.thinking.latent import BOT_TOKEN, EOT_TOKEN
from dartlm.methods.icot import sample_offset

from conftest import randomise_adapters

QUESTIONS = [
    "Tom has 3 apples.",  # short and long questions in one batch: left padding must not matter
    "Ann had 40 dollars and spent 9. Then she earned 25 and spent 4 more. How much now?",
    "A shop sells 12 pens a day for 7 days. How many pens?",
]


def randomise(model, seed=0):
    """Non-zero adapters and projection, so that every part of the model shapes the output."""
    return randomise_adapters(model, seed, 0.2, add=True).eval()


@pytest.fixture(params=["coconut", "codi"])
def latent(request, tokenizer):
    model, method, batch, tok, _ = prepared(request.param, tokenizer)
    return randomise(model), method, batch, tok


def decode(model, tok, method, questions, **kwargs):
    spec = method.prompt_spec()
    generations, passes = decode_prompts(model, tok, spec, prompt_ids(questions, tok, spec), max_new_tokens=6,
                                         **kwargs)
    return [g.text for g in generations], passes


def test_latent_decoding_with_and_without_the_kv_cache_gives_the_same_tokens(latent):
    model, method, _, tok = latent
    cached, passes = decode(model, tok, method, QUESTIONS)
    recomputed, passes_without = decode(model, tok, method, QUESTIONS, use_cache=False)
    assert cached == recomputed
    assert any(cached)  # something was generated, so the comparison is not vacuous
    thoughts = method.prompt_spec().num_thought_tokens
    # prefill + one pass per thought + <eot> SEP + one per further token
    assert thoughts > 0 and passes == passes_without >= 1 + thoughts + 1


def test_batched_latent_decoding_equals_one_by_one(latent):
    model, method, _, tok = latent
    batched, _ = decode(model, tok, method, QUESTIONS)
    single = [decode(model, tok, method, [q])[0][0] for q in QUESTIONS]
    assert batched == single
    assert len(set(batched)) > 1  # different questions, different outputs: the rows did not leak into each other


def test_latent_training_loss_is_the_same_with_and_without_the_cache(latent):
    model, method, batch, _ = latent
    if method.name == "coconut":
        method.set_progress(2 * method.settings.coconut_epochs_per_stage, 0)  # stage 2: four thoughts
    with torch.no_grad():
        cached, _ = method.loss(model, batch)
        recomputed, _ = method.loss(model, batch, use_cache=False)
    assert torch.isfinite(cached)
    assert cached.item() == pytest.approx(recomputed.item(), rel=1e-5)


def test_a_thought_is_the_last_hidden_state_fed_back(tokenizer):
    """Coconut's thought i+1 is the final hidden state at thought i: check one step by hand, without the cache."""
    model, method, batch, _, _ = prepared("coconut", tokenizer)
    model.eval()
    tensors = method.batch(batch, "cpu", stage=1)
    prefix = tensors["prefix"]
    with torch.no_grad():
        runner = SequenceRunner(model, use_cache=False)
        first = runner.feed_ids(prefix["input_ids"], prefix["attention_mask"], hidden_states=True)
        by_hand = model(inputs_embeds=torch.cat([model.get_input_embeddings()(prefix["input_ids"]),
                                                 first.last_hidden[:, None]], dim=1),
                        attention_mask=torch.cat([prefix["attention_mask"], torch.ones(3, 1, dtype=torch.long)], 1),
                        position_ids=(torch.cat([prefix["attention_mask"], torch.ones(3, 1, dtype=torch.long)], 1)
                                      .cumsum(-1) - 1).clamp(min=0),
                        output_hidden_states=True).hidden_states[-1][:, -1]
        second = runner.feed(first.last_hidden[:, None], hidden_states=True)
    assert torch.allclose(second.last_hidden, by_hand, atol=1e-6)


def test_coconut_stages_replace_steps_with_thoughts(tokenizer):
    model, method, batch, tok, _ = prepared("coconut", tokenizer)
    c, last = method.settings.coconut_thoughts_per_step, method.settings.coconut_max_stages
    features = batch["features"]
    two_steps = next(i for i, f in enumerate(features) if len(f.steps) == 2)
    for stage in range(last + 1):
        suffix = method.batch(batch, "cpu", stage)["suffix"]
        row_ids = suffix["input_ids"][two_steps][suffix["attention_mask"][two_steps].bool()].tolist()
        kept = () if stage >= last else features[two_steps].steps[stage:]
        expected = [tok.convert_tokens_to_ids(EOT_TOKEN)] + [t for s in kept for t in s] + \
            list(features[two_steps].segments.separator + features[two_steps].segments.answer)
        assert row_ids == expected
        assert method.stage(stage * method.settings.coconut_epochs_per_stage) == stage
    assert method.stage(100.0) == last
    assert method.prompt_spec().num_thought_tokens == last * c
    prefix = method.batch(batch, "cpu", 0)["prefix"]
    assert (prefix["input_ids"][:, -1] == tok.convert_tokens_to_ids(BOT_TOKEN)).all()  # left-padded: <bot> aligned


def test_codi_distills_at_the_separator_and_supervises_only_the_answer(tokenizer):
    model, method, batch, tok, _ = prepared("codi", tokenizer)
    randomise(model)
    with torch.no_grad():
        total, terms = method.loss(model, batch)
    assert total.item() == pytest.approx(terms["loss_cot"] + terms["loss_st"] + 20.0 * terms["loss_distill"], rel=1e-5)
    from dartlm.methods.coconut import latent_suffix

    suffix = latent_suffix(batch["features"][0], ())
    assert REASONING in suffix.roles and ANSWER in suffix.roles
    assert suffix.input_ids[suffix.anchor] == batch["features"][0].segments.separator[-1]
    assert set(suffix.roles[suffix.anchor + 1:]) == {ANSWER}


def test_icot_removes_cot_tokens_from_the_left_on_schedule(tokenizer):
    model, method, batch, tok, _ = prepared("icot", tokenizer)
    method.settings.icot_smoothing = 0.0
    method.settings.icot_tokens_per_epoch = 2.0
    seg = batch["segments"][2]
    for epoch, removed in ((0.0, 0), (0.4, 0), (0.9, 1), (1.0, 2), (2.5, 5)):
        method.set_progress(epoch, 0)
        tensors, _ = method.batch(batch, "cpu")
        ids = tensors["input_ids"][2][tensors["roles"][2] == REASONING].tolist()
        assert ids == list(seg.cot[removed:] + seg.separator)
    method.settings.icot_remove_all_after = 4
    method.set_progress(2.0, 0)
    tensors, mean_removed = method.batch(batch, "cpu")
    assert not ((tensors["roles"] == REASONING).sum(1) > len(seg.separator)).any()  # only the separator is left
    assert method.schedule_key(1.9) != method.schedule_key(2.0)


def test_icot_removal_smoothing_follows_its_distribution():
    rng = random.Random(0)
    draws = [sample_offset(1.0, 10, rng) for _ in range(4000)]
    # P(0) = (1 - e^-1) / (1 - e^-11) = 0.632
    assert abs(draws.count(0) / len(draws) - 0.632) < 0.03
    assert max(draws) <= 10


@pytest.mark.parametrize("name,overrides", [
    # 64 examples, batch 4: 16 steps per epoch. The schedules below change their stage during 6 steps.
    ("icot", ["method.icot_tokens_per_epoch=16", "method.icot_smoothing=0"]),  # one more token every step
    ("coconut", ["method.coconut_epochs_per_stage=0.125", "method.coconut_max_stages=2"]),  # a stage every 2 steps
    ("codi", []),
])
def test_train_export_and_answer_from_the_exported_folder(name, overrides, tmp_path, train_file):
    """Through the real trainer: curricula reset the optimizer when their stage changes, and the exported folder
    (a plain model, plus CODI's projection) decodes exactly as the trained adapter model."""
    from dartlm.config import load_config
    from dartlm.generate import generate, load_exported
    from dartlm.exports.run import export_run
    from dartlm.training.run import load_trained, train

    config = load_config(f"tiny/{name}", [f"data.train_path={train_file}", "training.max_steps=6",
                                          "training.batch_size=4", "training.logging_steps=1", *overrides])
    run_dir = tmp_path / "run"
    trainer = train(config, run_dir)
    expected_resets = {"icot": 5, "coconut": 2, "codi": 0}[name]
    assert trainer.optimizer_resets == expected_resets
    export_run(run_dir, tmp_path / "out", log=lambda *_: None)
    exported, tok, spec = load_exported(tmp_path / "out")
    assert spec.method == name and (spec.decode == "latent") == (name != "icot")
    assert hasattr(exported, "latent_projection") == (name == "codi")
    trained = load_trained(run_dir)
    from_export = [g.text for g in generate(exported, tok, spec, QUESTIONS, max_new_tokens=5)]
    from_run = [g.text for g in generate(trained.model, trained.tokenizer, trained.method.prompt_spec(), QUESTIONS,
                                         max_new_tokens=5)]
    assert from_export == from_run
