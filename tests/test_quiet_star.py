"""Quiet-STaR, Fast Quiet-STaR and FQS-NTP: parallel thoughts, the mixing head, REINFORCE, the curriculum, export."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import make_model
from dartlm.config import ConfigError, load_config
from dartlm.thinking.decoding import SequenceRunner
from dartlm.generate import generate, load_exported, prompt_ids, without_thoughts
from dartlm.methods import get_method
from dartlm.methods.quiet_star import policy_rewards, reinforce_loss
from dartlm.model.export import PROMPT_FILE, QUIET_HEAD_FILE
from dartlm.thinking.quiet import END, START, QuietHead, mixed_logits, think_in_parallel, thought_mask
from dartlm.exports.run import export_run
from dartlm.training.run import train

QUESTIONS = ["Tom has 12 apples and buys 30 more. He doubles them. How many apples?", "What is 3 + 4?"]


def trained_head(hidden: int, seed: int = 0) -> QuietHead:
    """A head whose mixing weight is not 0 and whose meta embeddings differ, so that they matter."""
    torch.manual_seed(seed)
    head = QuietHead(hidden, torch.randn(2, hidden))
    torch.nn.init.normal_(head.mixer[-1].weight, std=0.5)
    return head.eval()


def batch_of(tokenizer, texts, left: bool = False):
    rows = [tokenizer(t)["input_ids"][:10] for t in texts]
    width = max(map(len, rows))
    pad = lambda row, value: [value] * (width - len(row)) + row if left else row + [value] * (width - len(row))  # noqa: E731
    return torch.tensor([pad(r, 0) for r in rows]), torch.tensor([pad([1] * len(r), 0) for r in rows])


def one_position(model, head, ids: list[int], n_ahead: int, n_talk_ids: list[int]):
    """The reference: position t's thought generated on its own prefix, token by token, with the plain runner."""
    runner = SequenceRunner(model)
    runner.feed_ids(torch.tensor([ids]))
    meta = lambda which: head.meta_embedding(which).view(1, 1, -1)  # noqa: E731
    logits = runner.feed(meta(START)).logits[:, -1]
    thought = []
    for _ in range(n_ahead - 2):
        thought.append(int(logits.argmax(-1)))
        logits = runner.feed_ids(torch.tensor([[thought[-1]]])).logits[:, -1]
    runner.rewind(runner.length - 1)  # the last thought token goes in with the end of thought, as in parallel
    block = torch.cat([runner.embed(torch.tensor([[thought[-1]]])), meta(END), runner.embed(torch.tensor([n_talk_ids]))],
                      dim=1)
    states = runner.feed(block, hidden_states=True).hidden_states[-1][0, 1:]
    return thought, states


@pytest.mark.parametrize("family, use_cache, left", [("llama", True, False), ("llama", False, False),
                                                    ("llama", True, True), ("gpt2", True, False),
                                                    ("gpt2", False, True)])
def test_parallel_thoughts_equal_each_positions_own_thought(family, use_cache, left, tokenizer):
    model = make_model(family, len(tokenizer))
    head = trained_head(model.config.hidden_size)
    ids, mask = batch_of(tokenizer, ["Tom has 12 apples and buys 30 more.", "What is 3 + 4?"], left=left)
    n_ahead, n_talk = 5, 3
    with torch.no_grad():
        parallel = think_in_parallel(model, head, ids, mask, n_ahead=n_ahead, n_talk=n_talk, sample=False,
                                     use_cache=use_cache)
    assert parallel.thought_ids.shape == (2, ids.shape[1], n_ahead - 2)
    assert parallel.post_hidden.shape == (2, ids.shape[1], n_talk, model.config.hidden_size)
    assert parallel.passes == n_ahead
    checked = 0
    for row in range(2):
        first = int(mask[row].argmax())  # the first real token (left padding before it)
        for t in range(first, first + int(mask[row].sum())):
            talk = [int(x) for x in ids[row, t + 1 : t + n_talk]]
            if len(talk) < n_talk - 1 or not mask[row, t + 1 : t + n_talk].all():
                continue  # no true tokens to teacher-force at the end
            with torch.no_grad():
                thought, states = one_position(model, head, ids[row, first : t + 1].tolist(), n_ahead, talk)
            assert parallel.thought_ids[row, t].tolist() == thought, (row, t)
            torch.testing.assert_close(parallel.post_hidden[row, t], states, atol=2e-5, rtol=1e-4)
            checked += 1
    assert checked >= 10


def test_thinking_at_some_positions_gives_their_thoughts_of_thinking_everywhere(tokenizer):
    model = make_model("llama", len(tokenizer))
    head = trained_head(model.config.hidden_size)
    ids, mask = batch_of(tokenizer, ["Tom has 12 apples and buys 30 more.", "What is 3 + 4?"])
    at = torch.tensor([2, 5, ids.shape[1] - 1])
    with torch.no_grad():
        everywhere = think_in_parallel(model, head, ids, mask, n_ahead=4, n_talk=3, sample=False)
        some = think_in_parallel(model, head, ids, mask, n_ahead=4, n_talk=3, sample=False, at=at)
    assert torch.equal(some.thought_ids, everywhere.thought_ids[:, at])
    torch.testing.assert_close(some.post_hidden, everywhere.post_hidden[:, at], atol=2e-5, rtol=1e-4)


def test_the_mask_lets_an_appended_token_see_its_prefix_and_its_own_thought_only():
    owners = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])  # three originals, then two columns of thoughts
    columns = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    valid = torch.tensor([[1, 1, 0]])  # the third original token is padding
    mask = thought_mask(owners[6:], columns[6:], owners, columns, valid, torch.float32)[0, 0] == 0
    expected = torch.tensor([
        # originals  col 1    col 2
        [1, 0, 0, 1, 0, 0, 1, 0, 0],  # position 0, column 2
        [1, 1, 0, 0, 1, 0, 0, 1, 0],  # position 1
        [1, 1, 0, 0, 0, 1, 0, 0, 1],  # position 2: padding itself, sees the real prefix and its own thought
    ], dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_the_mixing_head_starts_by_trusting_the_base_logits_exactly(tokenizer):
    model = make_model("llama", len(tokenizer))
    hidden = model.config.hidden_size
    head = QuietHead(hidden, torch.randn(2, hidden))
    h_base, h_post = torch.randn(3, 5, hidden), torch.randn(3, 5, hidden)
    assert torch.equal(head.mixing_weight(h_base, h_post), torch.zeros(3, 5, 1))
    assert torch.equal(mixed_logits(model, head, h_base, h_post), model.get_output_embeddings()(h_base))
    # the meta embeddings are stored / 100 and come back whole
    init = torch.randn(2, hidden)
    torch.testing.assert_close(QuietHead(hidden, init).meta_embedding(END), init[1])


def test_rewards_subtract_the_mean_over_passes_and_clamp_negatives():
    improvement = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.5, 0.5], [0.5, -1.5]])  # 2 sequences x 2 passes
    assert torch.equal(policy_rewards(improvement, passes=2, clamp_negative=False),
                       torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 1.0], [0.0, -1.0]]))
    assert torch.equal(policy_rewards(improvement, passes=2),
                       torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]))
    assert torch.equal(policy_rewards(improvement, passes=1), improvement.clamp_min(0))
    scored = torch.tensor([[True, False], [True, True], [False, False], [True, True]])
    logprob = torch.full((4, 2), -2.0)
    reward = policy_rewards(improvement, passes=2)
    # -(0*-2 + 1*-2 + 1*-2 + 0 + 0) / 5 scored positions
    assert reinforce_loss(logprob, reward, scored).item() == pytest.approx(0.8)


@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_reinforce_raises_a_thought_with_positive_advantage_and_lowers_one_with_negative(advantage, tokenizer):
    model = make_model("llama", len(tokenizer))
    head = QuietHead(model.config.hidden_size, torch.randn(2, model.config.hidden_size))
    ids, mask = batch_of(tokenizer, ["What is 3 + 4?"])
    with torch.no_grad():
        sampled = think_in_parallel(model, head, ids, mask, n_ahead=5, n_talk=1, sample=True,
                                    generator=torch.Generator().manual_seed(0)).thought_ids

    def logprob():
        return think_in_parallel(model, head, ids, mask, n_ahead=5, n_talk=1, sample=False,
                                 forced=sampled).logprobs.sum(-1)  # (1, T)

    before = logprob().detach()
    scored = mask.bool()
    reward = torch.full(before.shape, advantage)
    model.train()
    reinforce_loss(logprob(), reward, scored).backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.05 * p.grad
    after = logprob().detach()
    change = (after - before)[scored]
    assert (change * advantage > 0).float().mean() > 0.9  # (nearly) every position's thought moves that way
    assert (change * advantage).mean() > 0
    # the source clamps negative rewards to 0: then the thought gets no gradient at all
    model.zero_grad()
    clamped = policy_rewards(torch.full(before.shape, -1.0), passes=1)
    reinforce_loss(logprob(), clamped, scored).backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_the_fast_quiet_star_curriculum_follows_its_schedule():
    config = load_config("tiny/fast-quiet-star").method
    method = get_method(config)
    shapes = []
    for step in range(9):
        method.set_progress(0.0, step, total_steps=9)
        shapes.append(method.thought_shape())
    assert shapes == [(5, 3)] * 3 + [(4, 2)] * 3 + [(3, 2)] * 3
    assert [method.schedule_key(0.0, s) for s in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    method.set_progress(0.0, 0, total_steps=0)  # outside training: the last stage, which inference uses
    assert method.thought_shape() == (3, 2) and method.prompt_spec().quiet_n_ahead == 3


def test_each_fast_quiet_star_stage_starts_a_fresh_optimizer_from_the_previous_weights(tmp_path, train_file):
    config = load_config("tiny/fast-quiet-star", [f"data.train_path={train_file}", "training.max_steps=9",
                                                  "training.logging_steps=1", "training.warmup_ratio=0"])
    trainer = train(config, tmp_path / "run")
    assert trainer.optimizer_resets == 2  # at the starts of stages 2 and 3
    # AdamW's step count restarted with the last stage (steps 7, 8, 9)
    steps = {int(s["step"]) for s in trainer.optimizer.state.values() if "step" in s}
    assert steps == {3}
    lengths = [entry["n_ahead"] for entry in trainer.state.log_history if "n_ahead" in entry]
    assert lengths == [5.0] * 3 + [4.0] * 3 + [3.0] * 3


@pytest.mark.parametrize("loss_on", ["all", "answer"])
def test_quiet_star_trains_exports_and_thinks_before_every_answer_token(loss_on, tmp_path, train_file):
    config = load_config("tiny/quiet-star", [f"data.train_path={train_file}", "training.max_steps=3",
                                             "training.logging_steps=1", f"method.quiet_loss_on={loss_on}"])
    trainer = train(config, tmp_path / "run")
    terms = [e for e in trainer.state.log_history if "loss_policy" in e]
    assert terms and all(k in terms[0] for k in ("loss_nll", "nll_base", "nll_mixed", "mix_weight"))
    export_run(tmp_path / "run", tmp_path / "out", log=lambda *_: None)
    spec = json.loads((tmp_path / "out" / PROMPT_FILE).read_text())
    assert spec["decode"] == "quiet" and spec["quiet_n_ahead"] == 4
    assert set(load_file(tmp_path / "out" / QUIET_HEAD_FILE)) >= {"meta", "embedding_scale", "mixer.4.weight"}
    model, tokenizer, spec = load_exported(tmp_path / "out")
    generations = generate(model, tokenizer, spec, QUESTIONS, max_new_tokens=6)
    for g in generations:
        # a thought of 2 tokens before every token, eos included unless the budget ran out first
        assert g.thought_tokens in (2 * g.num_tokens, 2 * (g.num_tokens + 1))
    # decoding without the cache gives the same tokens
    from dartlm.generate import decode_prompts

    prompts = prompt_ids(QUESTIONS, tokenizer, spec)
    cached, passes = decode_prompts(model, tokenizer, spec, prompts, max_new_tokens=6, min_new_tokens=6)
    uncached, _ = decode_prompts(model, tokenizer, spec, prompts, max_new_tokens=6, min_new_tokens=6,
                                 use_cache=False)
    assert [g.text for g in cached] == [g.text for g in uncached]
    # prompt, then per token: start, 1 thought token, [last thought + end], and the chosen token (not after the last)
    assert passes == 1 + 6 * 3 + 5
    # the ablation at inference: the same model answering from its thought-free state, one pass per token
    plain = without_thoughts(spec)
    unthought, passes = decode_prompts(model, tokenizer, plain, prompt_ids(QUESTIONS, tokenizer, plain),
                                       max_new_tokens=6, min_new_tokens=6)
    assert passes == 1 + 5 and all(g.thought_tokens == 0 for g in unthought)
    with pytest.raises(ValueError, match="think before each token"):
        without_thoughts(plain)


def test_fqs_ntp_exports_a_plain_model_that_answers_without_thought_tokens(tmp_path, train_file):
    data = [f"data.train_path={train_file}", "training.max_steps=3", "training.logging_steps=1"]
    train(load_config("tiny/fast-quiet-star", data), tmp_path / "teacher-run")
    export_run(tmp_path / "teacher-run", tmp_path / "teacher", log=lambda *_: None)
    trainer = train(load_config("tiny/fqs-ntp", data + [f"method.ntp_teacher={tmp_path / 'teacher'}"]),
                    tmp_path / "run")
    logged = [e for e in trainer.state.log_history if "teacher_nll" in e]
    assert logged and all(0 <= e["rewarded"] <= 1 for e in logged)
    out = tmp_path / "out"
    export_run(tmp_path / "run", out, log=lambda *_: None)
    assert not (out / QUIET_HEAD_FILE).exists()
    model, tokenizer, spec = load_exported(out)
    assert spec.decode == "answer" and spec.num_thought_tokens == 0 and not hasattr(model, "quiet_head")
    # stock transformers, in a fresh interpreter: greedy generate from the No-CoT prompt gives dartlm's answer
    ids = prompt_ids(QUESTIONS[:1], tokenizer, spec)[0]
    expected = generate(model, tokenizer, spec, QUESTIONS[:1], max_new_tokens=8)[0].text
    code = (
        "import torch, sys\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}).eval()\nt = AutoTokenizer.from_pretrained({str(out)!r})\n"
        f"o = m.generate(torch.tensor([{list(ids)}]), max_new_tokens=8, do_sample=False, "
        "pad_token_id=t.pad_token_id, eos_token_id=t.eos_token_id)\n"
        f"print(repr(t.decode(o[0, {len(ids)}:], skip_special_tokens=True).strip()))\n"
        "assert not any(k.startswith('dartlm') for k in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == repr(expected)
    stock = AutoModelForCausalLM.from_pretrained(out)
    assert type(stock).__name__ == "LlamaForCausalLM" and AutoTokenizer.from_pretrained(out).vocab_size > 0


def test_fqs_ntp_needs_a_teacher_and_the_quiet_settings_are_checked():
    with pytest.raises(ConfigError, match="ntp_teacher"):
        get_method(load_config("tiny/fqs-ntp", ["method.ntp_teacher="]).method)
    with pytest.raises(ConfigError, match="quiet_n_ahead"):
        load_config("tiny/quiet-star", ["method.quiet_n_ahead=1"])
    with pytest.raises(ConfigError, match="fqs_stages"):
        load_config("tiny/fast-quiet-star", ["method.fqs_stages=[[4]]"])
    with pytest.raises(ConfigError, match="quiet_loss_on"):
        load_config("tiny/quiet-star", ["method.quiet_loss_on=question"])
