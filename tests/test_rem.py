"""REM: identity at init, the off switch, exact merges on Llama, Qwen2 (GQA), GPT-2, Phi-3 (GQA) and GPT-NeoX,
Q untouched in fused projections, and clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from conftest import FAMILIES, FUSED_FAMILIES, make_model, randomise_adapters
from dartlm.model.adapters import ST_TOKEN, LoraSettings, add_special_token, attach_adapters
from dartlm.model.export import merge_adapters
from dartlm.model.rem import (
    CapturedAttention,
    RemFusedQKV,
    RemProjection,
    RemSettings,
    UnsupportedArchitectureError,
    inject_rem,
    rem_disabled,
    rem_wrappers,
)

LORA = LoraSettings(rank=8, alpha=16)
REM = RemSettings(rank=8, alpha=16)


def ids_for(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (3, 11), generator=torch.Generator().manual_seed(1))


def randomise_trainable(model: nn.Module, seed: int = 2) -> None:
    randomise_adapters(model, seed)


@pytest.mark.parametrize("placement", ["input", "output"])
@pytest.mark.parametrize("family", FAMILIES)
def test_rem_is_identity_at_init(family, placement, tokenizer):
    model = make_model(family, len(tokenizer))
    ids = ids_for(len(tokenizer))
    before = model(ids).logits
    inject_rem(model, RemSettings(rank=8, alpha=16, placement=placement))
    assert len(rem_wrappers(model)) == (1 if family in FUSED_FAMILIES else 2) * model.config.num_hidden_layers
    assert torch.equal(model(ids).logits, before)


@pytest.mark.parametrize("family", FAMILIES)
def test_rem_switched_off_is_bit_identical_to_lora_only(family, tokenizer):
    lora_only = attach_adapters(make_model(family, len(tokenizer)), LORA, None)
    randomise_trainable(lora_only)
    with_rem = copy.deepcopy(lora_only)
    inject_rem(with_rem, REM)
    randomise_trainable(with_rem, seed=3)  # re-randomises LoRA too: copy LoRA back from the LoRA-only model
    with torch.no_grad():
        lora_weights = {n: p for n, p in lora_only.named_parameters() if p.requires_grad}
        for name, param in with_rem.named_parameters():
            plain_name = name.replace(".proj.", ".")
            if plain_name in lora_weights:
                param.copy_(lora_weights[plain_name])
    ids = ids_for(len(tokenizer))
    expected = lora_only(input_ids=ids).logits
    with rem_disabled(with_rem):
        assert torch.equal(with_rem(input_ids=ids).logits, expected)
    # REM on (non-zero) changes the output, so the comparison above is not vacuous.
    assert not torch.allclose(with_rem(input_ids=ids).logits, expected, atol=1e-4)


def test_rem_disabled_restores_state_after_an_error(tokenizer):
    model = make_model("llama", len(tokenizer))
    inject_rem(model, REM)
    with pytest.raises(RuntimeError):
        with rem_disabled(model):
            assert not any(w.rem_enabled for w in rem_wrappers(model))
            raise RuntimeError("boom")
    assert all(w.rem_enabled for w in rem_wrappers(model))


@pytest.mark.parametrize("placement", ["input", "output"])
@pytest.mark.parametrize("family", FAMILIES)
def test_merge_is_exact_and_leaves_the_plain_architecture(family, placement, tokenizer):
    base = make_model(family, len(tokenizer))
    base_count = sum(p.numel() for p in base.parameters())
    base_modules = {type(m) for m in base.modules()}
    tok = copy.deepcopy(tokenizer)
    add_special_token(base, tok, ST_TOKEN)
    model = attach_adapters(base, LORA, RemSettings(rank=8, alpha=16, placement=placement))
    randomise_trainable(model)
    ids = ids_for(len(tok))
    reference = model(input_ids=ids).logits
    merged = merge_adapters(model)
    difference = (merged(input_ids=ids).logits - reference).abs().max().item()
    assert difference < 1e-4
    # The merged model holds only module types of the base architecture...
    assert {type(m) for m in merged.modules()} <= base_modules
    # ...and exactly its parameters plus the <st> row(s): one when the head is tied, two otherwise.
    hidden = merged.get_input_embeddings().weight.shape[1]
    rows = 1 if merged.config.tie_word_embeddings else 2
    assert sum(p.numel() for p in merged.parameters()) == base_count + rows * hidden


@pytest.mark.parametrize("family", FUSED_FAMILIES)
def test_fused_merge_keeps_query_features(family, tokenizer):
    model = make_model(family, len(tokenizer))
    inject_rem(model, REM)
    randomise_trainable(model)
    fused = rem_wrappers(model)[0]
    assert isinstance(fused, RemFusedQKV)
    before = fused.proj.weight.detach().clone()
    merge_adapters(model)
    after = fused.proj.weight
    # Output features are columns of a Conv1D weight (in, out) and rows of a Linear weight (out, in).
    features = (lambda w: w) if fused.layout.conv1d else (lambda w: w.T)
    kv = list(fused.layout.key_columns + fused.layout.value_columns)
    query = [c for c in range(features(before).shape[1]) if c not in set(kv)]
    assert torch.equal(features(after)[:, query], features(before)[:, query])
    assert not torch.allclose(features(after)[:, kv], features(before)[:, kv])


@pytest.mark.parametrize("family", FAMILIES)
def test_rem_feeds_x_prime_to_key_and_value_only(family, tokenizer):
    """Judged by the architecture's own attention code, not by REM's column indices: with the same REM on K and V,
    the first layer's query states equal those of the plain model, and its key and value states equal those of the
    plain model whose attention input is x' for every projection."""
    capture = CapturedAttention("dartlm-test-capture")
    model = make_model(family, len(tokenizer))
    model.set_attn_implementation(capture.name)
    inject_rem(model, REM)
    randomise_trainable(model)
    wrappers = rem_wrappers(model)
    first = wrappers[: 1 if family in FUSED_FAMILIES else 2]  # the first layer's K/V projection(s)
    with torch.no_grad():  # the same x -> x' for K and V, so that "every projection sees x'" is one model
        source = first[0].rem_k if family in FUSED_FAMILIES else first[0].rem
        for rem in ([first[0].rem_v] if family in FUSED_FAMILIES else [first[1].rem]):
            rem.load_state_dict(source.state_dict())
    ids = ids_for(len(tokenizer))
    q_rem, k_rem, v_rem = capture.first_layer(lambda: model(input_ids=ids))
    with rem_disabled(model):
        q_x, k_x, v_x = capture.first_layer(lambda: model(input_ids=ids))
        if family in FUSED_FAMILIES:
            projections = [first[0].proj]
        else:
            attention = next(m for m in model.modules() if getattr(m, "k_proj", None) is first[0])
            projections = [attention.q_proj, first[0].proj, first[1].proj]
        handles = [p.register_forward_pre_hook(lambda _, args: (source(args[0]),) + args[1:]) for p in projections]
        try:
            q_all, k_all, v_all = capture.first_layer(lambda: model(input_ids=ids))
        finally:
            for handle in handles:
                handle.remove()
    assert torch.equal(q_rem, q_x)
    assert not torch.allclose(q_all, q_x)  # x' does reach the query when every projection sees it
    assert torch.allclose(k_rem, k_all, atol=1e-6) and torch.allclose(v_rem, v_all, atol=1e-6)
    assert not torch.allclose(k_rem, k_x) and not torch.allclose(v_rem, v_x)


def test_llama_rem_matches_the_formula(tokenizer):
    """x' = x + (alpha/d) (x W_R1) W_R2^T, then k_proj(x')."""
    model = make_model("llama", len(tokenizer))
    inject_rem(model, REM)
    randomise_trainable(model)
    wrapper = model.model.layers[0].self_attn.k_proj
    assert isinstance(wrapper, RemProjection)
    x = torch.randn(2, 5, model.config.hidden_size)
    w_r1 = wrapper.rem.down.weight.T  # (n, d)
    w_r2 = wrapper.rem.up.weight  # (n, d)
    expected = wrapper.proj(x + (REM.alpha / REM.rank) * (x @ w_r1) @ w_r2.T)
    assert torch.allclose(wrapper(x), expected, atol=1e-6)


def test_unsupported_architecture_names_what_it_looked_for():
    class Mixer(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix = nn.Linear(8, 8)

    class WeirdAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Mixer()

    with pytest.raises(UnsupportedArchitectureError) as err:
        inject_rem(WeirdAttention(), REM)
    message = str(err.value)
    assert "k_proj" in message and "v_proj" in message and "fused" in message
    assert "Llama" in message and "GPT-2" in message and "Phi-3" in message and "GPT-NeoX" in message
    assert "WeirdAttention" in message


def test_a_fused_projection_of_unknown_layout_is_refused_by_name():
    """Falcon's `query_key_value` has another Q/K/V layout than GPT-NeoX's: adapting it as NeoX would be wrong."""
    config = AutoConfig.for_model("falcon", vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=4)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(UnsupportedArchitectureError) as err:
        inject_rem(model, REM)
    message = str(err.value)
    assert "FalconAttention" in message and "`query_key_value`" in message and "GPT-NeoX" in message
    assert not rem_wrappers(model)


def test_merge_requires_lora_merged_first(tokenizer):
    model = attach_adapters(make_model("llama", len(tokenizer)), LORA, REM)
    from dartlm.model.rem import merge_rem

    with pytest.raises(TypeError, match="merge LoRA first"):
        merge_rem(model)


def test_output_placement_is_a_lora_on_k_and_v_that_switches_off(tokenizer):
    # The "REM -> LoRA" ablation: k = k_proj(x) + s * B A x on the ST pathway, k_proj(x) on the CoT pathway.
    model = make_model("qwen2-gqa", len(tokenizer))  # GQA: k/v outputs narrower than the hidden size
    inject_rem(model, RemSettings(rank=4, alpha=8, placement="output"))
    randomise_trainable_rem(model)
    wrapper = model.model.layers[0].self_attn.k_proj
    x = torch.randn(2, 5, model.config.hidden_size)
    delta = (x @ wrapper.rem.down.weight.T @ wrapper.rem.up.weight.T) * 2.0
    assert torch.allclose(wrapper(x), wrapper.proj(x) + delta, atol=1e-6)
    with rem_disabled(model):
        assert torch.equal(wrapper(x), wrapper.proj(x))
    with pytest.raises(ValueError, match="placement"):
        RemSettings(placement="middle")


def randomise_trainable_rem(model: nn.Module) -> None:
    randomise_adapters(model, 4, only=".rem")


@pytest.mark.parametrize("multi_query", [False, True])
def test_gpt_bigcode_is_refused_although_its_fused_projection_is_called_c_attn(multi_query):
    """GPT-BigCode (StarCoder) names its fused projection `c_attn`, like GPT-2, with another layout: taking it for
    GPT-2's [q | k | v] transformed query features (multi_query=False) or crashed the forward (multi_query=True)."""
    config = AutoConfig.for_model("gpt_bigcode", vocab_size=64, n_embd=32, n_layer=1, n_head=4,
                                  multi_query=multi_query)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(UnsupportedArchitectureError) as err:
        inject_rem(model, REM)
    message = str(err.value)
    assert "GPTBigCodeAttention" in message and "`c_attn`" in message and "\n" not in message


def test_the_placement_check_refuses_a_layout_read_wrongly(monkeypatch, tokenizer):
    """Mutation: GPT-2's layout with the K features pointed at the query block. REM then changes the query states
    and leaves the keys alone; the check attached to inject_rem must say so."""
    from dartlm.model import rem as rem_module

    real = rem_module.contiguous_layout

    def wrong(kind, attribute, query, kv):
        layout = real(kind, attribute, query, kv)
        return rem_module.FusedLayout(layout.kind, layout.attribute, tuple(range(0, kv)), layout.value_columns,
                                      conv1d=layout.conv1d)

    monkeypatch.setattr(rem_module, "contiguous_layout", wrong)
    with pytest.raises(UnsupportedArchitectureError, match="changes the query states.*leaves the key states unchanged"):
        inject_rem(make_model("gpt2", len(tokenizer)), REM)


def test_the_placement_check_refuses_a_rem_that_never_reaches_the_values(monkeypatch, tokenizer):
    """Mutation: a wrapper whose REM is skipped on the value projection."""
    real_forward = RemProjection.forward

    def skips_values(self, x, *args, **kwargs):
        if getattr(self, "_is_value", False):
            return self.proj(x, *args, **kwargs)
        return real_forward(self, x, *args, **kwargs)

    monkeypatch.setattr(RemProjection, "forward", skips_values)
    real_init = RemProjection.__init__
    created = []

    def marks(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        created.append(self)
        self._is_value = len(created) % 2 == 0  # k_proj then v_proj, layer by layer

    monkeypatch.setattr(RemProjection, "__init__", marks)
    with pytest.raises(UnsupportedArchitectureError, match="leaves the value states unchanged"):
        inject_rem(make_model("llama", len(tokenizer)), REM)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_placement_check_passes_and_restores_the_adapters_and_attention(family, tokenizer):
    model = make_model(family, len(tokenizer))
    before = model.config._attn_implementation
    wrappers = inject_rem(model, REM)
    assert model.config._attn_implementation == before
    for wrapper in wrappers:
        for module in wrapper.modules():
            if hasattr(module, "up") and isinstance(module.up, nn.Linear):
                assert torch.count_nonzero(module.up.weight) == 0  # still the identity at init
