"""The DART objective on a tiny model: its three terms, which pathway sees REM, and what one step trains."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import FAMILIES, dart_features, make_model
from dartlm.data.example import Example
from dartlm.data.layout import ANSWER, DartCollator
from dartlm.losses import answer_loss, cot_pathway_loss
from dartlm.methods.dart import DartLossSettings, dart_loss
from dartlm.model.adapters import ST_TOKEN, LoraSettings, add_special_token, attach_adapters, ensure_pad_token
from dartlm.model.rem import RemSettings, rem_disabled

EXAMPLES = [
    Example("Tom has 3 apples and buys 15 more. How many apples does he have?", ("<<3+15=18>>",), "18"),
    Example("A shop sells 12 pens a day for 7 days. How many pens?", ("<<12*7=84>>",), "84"),
    Example("Ann had 40 dollars and spent 9. Then she earned 25. How much now?", ("<<40-9=31>>", "<<31+25=56>>"), "56"),
]


@pytest.fixture(params=list(FAMILIES))
def setup(request, tokenizer):
    tok = copy.deepcopy(tokenizer)
    ensure_pad_token(tok)
    base = make_model(request.param, len(tok))
    st_id = add_special_token(base, tok, ST_TOKEN)
    model = attach_adapters(base, LoraSettings(rank=8, alpha=16), RemSettings(rank=8, alpha=16))
    batch = DartCollator(tok.pad_token_id)([dart_features(e, tok, st_id, 4) for e in EXAMPLES])
    return model, batch


def test_terms_are_finite_and_combine_with_lambda(setup):
    model, batch = setup
    out = dart_loss(model, batch, DartLossSettings(distill_weight=20.0))
    terms = (out.cot, out.st, out.distill)
    assert all(torch.isfinite(t) for t in terms)
    assert out.distill > 0  # <st> tokens are not the CoT, so the hidden states differ
    assert out.total.item() == pytest.approx((out.cot + out.st + 20.0 * out.distill).item(), rel=1e-6)
    assert set(out.logs()) == {"loss_cot", "loss_st", "loss_distill", "teacher_spread"}
    assert 0 < out.logs()["teacher_spread"] < 2


def test_cot_pathway_runs_without_rem_and_st_pathway_with_it(setup):
    model, batch = setup
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".rem" in name:
                param.normal_(std=0.1)  # make REM matter
        out = dart_loss(model, batch, DartLossSettings())
        cot, st = batch["cot"], batch["st"]
        with rem_disabled(model):
            cot_plain = model(input_ids=cot["input_ids"], attention_mask=cot["attention_mask"]).logits
            st_plain = model(input_ids=st["input_ids"], attention_mask=st["attention_mask"]).logits
        st_rem = model(input_ids=st["input_ids"], attention_mask=st["attention_mask"]).logits
    assert out.cot.item() == pytest.approx(cot_pathway_loss(cot_plain, cot["input_ids"], cot["roles"]).item(), rel=1e-6)
    assert out.st.item() == pytest.approx(answer_loss(st_rem, st["input_ids"], st["roles"]).item(), rel=1e-6)
    assert out.st.item() != pytest.approx(answer_loss(st_plain, st["input_ids"], st["roles"]).item(), rel=1e-4)


def test_one_step_changes_lora_and_rem_and_nothing_else(setup):
    model, batch = setup
    model.train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    dart_loss(model, batch, DartLossSettings()).total.backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    lora = {name for name in before if "lora_" in name}
    rem = {name for name in before if ".rem" in name}
    assert changed == lora | rem
    assert lora and rem


def test_early_cot_backward_gives_the_same_gradients(setup):
    """Back-propagating L_CoT before the ST pathway runs (to save memory) must not change the gradients."""
    model, batch = setup
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".rem" in name:
                param.normal_(std=0.1)
    params = [p for p in model.parameters() if p.requires_grad]

    def gradients(early: bool):
        model.zero_grad()
        out = dart_loss(model, batch, DartLossSettings(), backward=(lambda part: part.backward()) if early else None)
        out.total.backward()
        return out, [p.grad.clone() for p in params]

    together, reference = gradients(early=False)
    split, grads = gradients(early=True)
    assert split.total.item() == pytest.approx(together.total.item(), rel=1e-6)
    for a, b in zip(reference, grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("where", ["z_n", "y_1", "z_n_and_answer"])
def test_distillation_matches_the_chosen_positions_by_hand(setup, where):
    """Table 3's ablations move the matched positions; check them against hidden states picked by hand."""
    model, batch = setup
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".rem" in name:
                param.normal_(std=0.1)
        out = dart_loss(model, batch, DartLossSettings(distill_at=where))
        cot, st = batch["cot"], batch["st"]
        with rem_disabled(model):
            teacher = model(input_ids=cot["input_ids"], attention_mask=cot["attention_mask"], output_hidden_states=True)
        student = model(input_ids=st["input_ids"], attention_mask=st["attention_mask"], output_hidden_states=True)

    def picked(pathway, hidden):
        rows = []
        for row in range(pathway["input_ids"].shape[0]):
            anchor = int(pathway["anchor"][row])
            answer = (pathway["roles"][row] == ANSWER).nonzero().flatten().tolist()
            positions = {"z_n": [anchor], "y_1": [anchor + 1], "z_n_and_answer": [anchor] + answer}[where]
            rows += [torch.stack([h[row, p] for h in hidden[1:]]) for p in positions]  # each (L, n)
        return torch.stack(rows, dim=1)  # (L, M, n)

    t, s = picked(cot, teacher.hidden_states), picked(st, student.hidden_states)
    expected = torch.stack([(t[l] - s[l]).abs().mean() / t[l].std() for l in range(t.shape[0])]).mean()
    assert out.distill.item() == pytest.approx(expected.item(), rel=1e-5)
    if where == "z_n_and_answer":
        assert t.shape[1] > cot["input_ids"].shape[0]  # more than one position per row
