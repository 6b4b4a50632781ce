"""REM, the Reasoning Evolvement Module: a low-rank residual on the inputs of the key and value projections.

For every decoder layer and J in {K, V} (paper section 3.2):

    x' = x + (alpha / d) * (x @ W_R1) @ W_R2.T        x: (..., n), W_R1, W_R2: (n, d)
    k = k_proj(x'_K)        v = v_proj(x'_V)           q_proj still sees x

REM is active only on the silent-thought pathway; the CoT pathway runs the same model inside
`rem_disabled(model)`. Because x -> x' is linear, REM folds exactly into the projection weights
(`merge_rem`), leaving the plain base architecture.

`placement="output"` is the paper's "REM replaced by LoRA" ablation (Table 3): the same switchable, ST-only
low-rank module, but added to the projection's output (k = k_proj(x) + s * B A x, a LoRA on k/v) instead of
transforming its input.

Two attention layouts are supported:
- separate `k_proj` / `v_proj` linears (Llama, Mistral, Qwen2, Qwen3, Gemma, SmolLM, ...): each projection is
  wrapped in `RemProjection`;
- a fused query-key-value projection: GPT-2's `c_attn` (a `Conv1D` producing [q | k | v]), Phi-3's `qkv_proj`
  ([q | k | v], grouped-query) and GPT-NeoX's `query_key_value` (per head [q_h | k_h | v_h]): wrapped in
  `RemFusedQKV`, which feeds REM-transformed inputs to the K and V output features only (`FusedLayout` says
  which they are), so Q is untouched.

The wrapped projection lives in the attribute `proj` (not `base_layer`), so that PEFT's own unload/merge walks
through the wrapper and handles a LoRA layer inside it as usual.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

SUPPORTED_FAMILIES = (
    "Llama-style attention with separate `k_proj`/`v_proj` (Llama, Mistral, Qwen2, Qwen3, Gemma, SmolLM)",
    "GPT-2 with a fused `c_attn` (Conv1D)",
    "Phi-3 / Phi-4 with a fused `qkv_proj`",
    "GPT-NeoX / Pythia with a fused, per-head interleaved `query_key_value`",
)


class UnsupportedArchitectureError(ValueError):
    """The model has no attention module REM knows how to adapt."""


PLACEMENTS = ("input", "output")


@dataclass(frozen=True)
class RemSettings:
    """REM hyper-parameters; the paper uses d = 128, alpha = 32 (section 4.2)."""

    rank: int = 128
    alpha: float = 32.0
    placement: str = "input"  # "input": REM (x -> x'); "output": a LoRA on k/v, the Table 3 ablation

    def __post_init__(self):
        if self.placement not in PLACEMENTS:
            raise ValueError(f"REM placement must be one of {PLACEMENTS}, got {self.placement!r}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


def widened(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor in fp32, or in its own dtype when that is wider (a float64 merge check stays in float64)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


class LowRankResidual(nn.Module):
    """x -> x + s * up(down(x)), the identity at initialisation (`up` starts at zero, as LoRA's B does)."""

    def __init__(self, features: int, rank: int, scaling: float):
        super().__init__()
        self.down = nn.Linear(features, rank, bias=False)  # weight (d, n) = W_R1^T
        self.up = nn.Linear(rank, features, bias=False)  # weight (n, d) = W_R2
        self.scaling = scaling
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Adapter weights may be kept in fp32 while the model runs in bf16: compute in theirs, return in x's.
        delta = self.up(self.down(x.to(self.down.weight.dtype))) * self.scaling  # (..., n)
        return x + delta.to(x.dtype)

    @torch.no_grad()
    def matrix(self) -> torch.Tensor:
        """The (n, n) matrix M with x' = x @ M, in fp32 or wider: I + s * W_R1 @ W_R2^T."""
        down = widened(self.down.weight)  # (d, n)
        up = widened(self.up.weight)  # (n, d)
        eye = torch.eye(down.shape[1], device=down.device, dtype=down.dtype)
        return eye + self.scaling * down.T @ up.T


class LowRankDelta(nn.Module):
    """x -> s * up(down(x)), a LoRA branch of its own (zero at initialisation): the output-placed ablation."""

    def __init__(self, features: int, out_features: int, rank: int, scaling: float):
        super().__init__()
        self.down = nn.Linear(features, rank, bias=False)  # A: (d, n)
        self.up = nn.Linear(rank, out_features, bias=False)  # B: (out, d)
        self.scaling = scaling
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.up(self.down(x.to(self.down.weight.dtype))) * self.scaling).to(x.dtype)

    @torch.no_grad()
    def matrix(self) -> torch.Tensor:
        """The (out, n) weight update s * B A, in fp32 or wider."""
        return self.scaling * widened(self.up.weight) @ widened(self.down.weight)


class RemProjection(nn.Module):
    """A key or value projection with REM (when enabled): on its input, or, as the ablation, added to its output."""

    def __init__(self, proj: nn.Module, features: int, settings: RemSettings, out_features: int = 0):
        super().__init__()
        self.proj = proj
        self.placement = settings.placement
        if self.placement == "input":
            self.rem = LowRankResidual(features, settings.rank, settings.scaling)
        else:
            self.rem = LowRankDelta(features, out_features, settings.rank, settings.scaling)
        self.rem_enabled = True

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if not self.rem_enabled:
            return self.proj(x, *args, **kwargs)
        if self.placement == "input":
            return self.proj(self.rem(x), *args, **kwargs)
        return self.proj(x, *args, **kwargs) + self.rem(x)

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """Fold REM into the (plain `nn.Linear`) projection and return it; bias unchanged.

        input: y = W x' = W M^T x, so W <- W M^T. output: y = W x + s B A x, so W <- W + s B A.
        """
        linear = _require(self.proj, nn.Linear)
        weight = linear.weight  # (out, n)
        if self.placement == "input":
            linear.weight.copy_((widened(weight) @ self.rem.matrix().T).to(weight.dtype))
        else:
            linear.weight.copy_((widened(weight) + self.rem.matrix()).to(weight.dtype))
        return linear


@dataclass(frozen=True)
class FusedLayout:
    """Where a fused query-key-value projection puts K and V in its output, and how it stores its weight.

    `kind` names the family's layout: "gpt2" ([q | k | v] from a `Conv1D`, weight (in, out)), "phi3"
    ([q | k | v] with grouped-query K/V blocks, an `nn.Linear`) or "gpt-neox" (per head [q_h | k_h | v_h],
    interleaved, an `nn.Linear`). The column indices are over the projection's output features.
    """

    kind: str
    attribute: str  # the projection's attribute on the attention module
    key_columns: tuple[int, ...]
    value_columns: tuple[int, ...]
    conv1d: bool = False  # transformers' Conv1D: y = x W + b with W (in, out)


def contiguous_layout(kind: str, attribute: str, query: int, kv: int) -> FusedLayout:
    """[q (query features) | k (kv) | v (kv)]."""
    return FusedLayout(kind, attribute, tuple(range(query, query + kv)),
                       tuple(range(query + kv, query + 2 * kv)), conv1d=kind == "gpt2")


def interleaved_layout(kind: str, attribute: str, heads: int, head_dim: int) -> FusedLayout:
    """Per head h, [q_h | k_h | v_h] of head_dim each (GPT-NeoX views the output as (heads, 3 * head_dim))."""
    key = tuple(3 * head_dim * h + head_dim + i for h in range(heads) for i in range(head_dim))
    value = tuple(3 * head_dim * h + 2 * head_dim + i for h in range(heads) for i in range(head_dim))
    return FusedLayout(kind, attribute, key, value)


class RemFusedQKV(nn.Module):
    """A fused query-key-value projection: Q from the raw input, K and V from their own REM-transformed inputs.

    The fused projection (possibly with LoRA inside) is linear per output feature, so running it on the K and V
    inputs and keeping only their columns equals separate K and V projections of x'. Running it three times costs
    the ST pathway two more projections per layer; it keeps a LoRA inside the projection working unchanged.
    """

    def __init__(self, proj: nn.Module, features: int, settings: RemSettings, layout: FusedLayout):
        super().__init__()
        self.proj = proj
        self.placement = settings.placement
        self.layout = layout
        self.features = features
        if self.placement == "input":
            self.rem_k = LowRankResidual(features, settings.rank, settings.scaling)
            self.rem_v = LowRankResidual(features, settings.rank, settings.scaling)
        else:
            self.rem_k = LowRankDelta(features, len(layout.key_columns), settings.rank, settings.scaling)
            self.rem_v = LowRankDelta(features, len(layout.value_columns), settings.rank, settings.scaling)
        # Not saved: they follow from the layout, which follows from the architecture. On the projection's device,
        # as the model may already be on a GPU when REM goes in.
        device = next(proj.parameters()).device
        self.register_buffer("key_index", torch.tensor(layout.key_columns, device=device), persistent=False)
        self.register_buffer("value_index", torch.tensor(layout.value_columns, device=device), persistent=False)
        self.rem_enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.proj(x)  # (B, T, out)
        if not self.rem_enabled:
            return qkv
        keys, values = self.key_index, self.value_index
        if self.placement == "output":
            qkv = qkv.index_add(-1, keys, self.rem_k(x))
            return qkv.index_add(-1, values, self.rem_v(x))
        qkv = qkv.index_copy(-1, keys, self.proj(self.rem_k(x)).index_select(-1, keys))
        return qkv.index_copy(-1, values, self.proj(self.rem_v(x)).index_select(-1, values))

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """Fold REM into the K and V output features of the projection weight; Q's are left as they are."""
        proj = self.proj
        if self.layout.conv1d:
            if not hasattr(proj, "nf") or proj.weight.shape[0] != self.features:
                raise TypeError(f"expected GPT-2's Conv1D inside RemFusedQKV, found {type(proj).__name__}")
            weight = proj.weight  # (in, out): y = x W, columns are output features
        else:
            weight = _require(proj, nn.Linear).weight.T  # a view (in, out) of (out, in)
        for index, rem in ((self.key_index, self.rem_k), (self.value_index, self.rem_v)):
            block = widened(weight[:, index])  # (in, k)
            if self.placement == "input":  # y = x' W = x M W
                block = rem.matrix() @ block
            else:  # y = x W + s x A^T B^T
                block = block + rem.matrix().T
            weight[:, index] = block.to(weight.dtype)
        return proj


REM_WRAPPERS = (RemProjection, RemFusedQKV)


def _require(module: nn.Module, kind: type) -> nn.Module:
    if not isinstance(module, kind):
        raise TypeError(
            f"REM can only be merged into a plain {kind.__name__}, found {type(module).__name__}; "
            "merge LoRA first (PeftModel.merge_and_unload)"
        )
    return module


def _projection_features(proj: nn.Module) -> int:
    """Input width of a projection, looking through a PEFT LoRA layer if there is one."""
    base = proj.get_base_layer() if hasattr(proj, "get_base_layer") else proj
    if isinstance(base, nn.Linear):
        return base.in_features
    if hasattr(base, "nf"):  # transformers' Conv1D: weight (in, out)
        return base.weight.shape[0]
    raise UnsupportedArchitectureError(f"cannot read the input width of {type(base).__name__}")


def _projection_outputs(proj: nn.Module) -> int:
    base = proj.get_base_layer() if hasattr(proj, "get_base_layer") else proj
    return base.out_features


# Fused projections whose Q/K/V layout is not known here: refused by name rather than adapted wrongly (Falcon's
# multi-query `query_key_value`, for one, is laid out unlike GPT-NeoX's).
FUSED_ATTRIBUTES = ("c_attn", "qkv_proj", "query_key_value", "Wqkv")


def fused_layout(attention: nn.Module) -> FusedLayout | None:
    """The fused Q/K/V layout of a self-attention module of a supported family, None if it has none.

    Raises UnsupportedArchitectureError for a fused projection of an unknown family.
    """
    kind = type(attention).__name__
    # The layout is chosen by the architecture, never by the attribute's name alone: GPT-BigCode also calls its
    # fused projection `c_attn`, laid out otherwise (multi-query: [q | k | v] with one K/V head).
    if kind.startswith("GPT2") and hasattr(attention, "c_attn"):  # GPT-2: Conv1D(3n, n) -> [q | k | v]
        if getattr(attention, "is_cross_attention", False):
            return None
        n = _projection_features(attention.c_attn)
        return contiguous_layout("gpt2", "c_attn", n, n)
    if kind.startswith("Phi3") and hasattr(attention, "qkv_proj"):  # Phi-3, Phi-4: [q | k | v], GQA
        config = attention.config
        query = config.num_attention_heads * attention.head_dim
        return contiguous_layout("phi3", "qkv_proj", query, attention.num_key_value_heads * attention.head_dim)
    if kind.startswith("GPTNeoX") and hasattr(attention, "query_key_value"):  # (heads, [q | k | v]) per head
        return interleaved_layout("gpt-neox", "query_key_value", attention.config.num_attention_heads,
                                  attention.head_size)
    fused = [name for name in FUSED_ATTRIBUTES if isinstance(getattr(attention, name, None), nn.Module)]
    if fused:
        raise UnsupportedArchitectureError(
            f"{kind} has a fused projection `{fused[0]}` whose query/key/value layout REM does not know, so it "
            "cannot adapt K and V alone. Supported: " + "; ".join(SUPPORTED_FAMILIES)
        )
    return None


def find_attention_sites(model: nn.Module) -> list[tuple[str, nn.Module, "str | FusedLayout"]]:
    """(module name, attention module, layout) for every self-attention REM applies to.

    layout is "separate" (k_proj + v_proj) or the FusedLayout of a fused projection. Cross-attention is skipped.
    """
    sites = []
    for name, module in model.named_modules():
        if isinstance(module, REM_WRAPPERS):
            raise ValueError("REM is already injected into this model")
        if hasattr(module, "k_proj") and hasattr(module, "v_proj"):
            sites.append((name, module, "separate"))
        elif (layout := fused_layout(module)) is not None:
            sites.append((name, module, layout))
    if not sites:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__}: REM looks for attention modules with separate `k_proj` and `v_proj` "
            "projections or with a known fused projection, and found neither. Supported: "
            + "; ".join(SUPPORTED_FAMILIES)
            + ". Attention-like modules in this model: "
            + (", ".join(sorted(_attention_like_classes(model))) or "none")
        )
    return sites


def _attention_like_classes(model: nn.Module) -> set[str]:
    return {type(m).__name__ for m in model.modules() if "attention" in type(m).__name__.lower()}


def inject_rem(model: nn.Module, settings: RemSettings, *, verify: bool = True) -> list[nn.Module]:
    """Wrap the K/V inputs of every self-attention module with REM (identity at init); returns the wrappers.

    Inject after LoRA, so that REM's transformed input reaches the LoRA branch of k/v as well as the base weight.
    With verify (the default), `verify_placement` then checks on the model itself that REM reaches the key and
    value states and nothing else.
    """
    wrappers: list[nn.Module] = []
    for _, attn, layout in find_attention_sites(model):
        if layout == "separate":
            for attr in ("k_proj", "v_proj"):
                proj = getattr(attn, attr)
                wrapper = RemProjection(proj, _projection_features(proj), settings, _projection_outputs(proj))
                setattr(attn, attr, wrapper)
                wrappers.append(wrapper)
        else:
            proj = getattr(attn, layout.attribute)
            wrapper = RemFusedQKV(proj, _projection_features(proj), settings, layout)
            setattr(attn, layout.attribute, wrapper)
            wrappers.append(wrapper)
    reference = next(model.parameters())
    for wrapper in wrappers:
        # Adapters live in fp32 (as PEFT keeps LoRA) on the model's device, whatever the base dtype.
        for rem in _rems(wrapper):
            rem.to(device=reference.device, dtype=torch.float32)
    if verify:
        verify_placement(model, wrappers)
    return wrappers


class CapturedAttention:
    """An attention implementation that records the query, key and value states each layer receives, after the
    architecture's own projection and split (so a wrong reading of a fused layout shows), then runs sdpa.

    Registered with transformers under `name`; a model uses it after `model.set_attn_implementation(name)`.
    """

    def __init__(self, name: str = "dartlm-rem-check"):
        from transformers import AttentionInterface

        self.name = name
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        AttentionInterface.register(self.name, self)

    def __call__(self, module, query, key, value, *args, **kwargs):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        self.calls.append((query.detach().clone(), key.detach().clone(), value.detach().clone()))
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, *args, **kwargs)

    def first_layer(self, run) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(q, k, v) of the first attention call of `run()` (no gradients), None if attention was never called."""
        self.calls.clear()
        with torch.no_grad():
            run()
        return self.calls[0] if self.calls else None


def verify_placement(model: nn.Module, wrappers: list[nn.Module]) -> None:
    """Refuse (UnsupportedArchitectureError, one line) unless REM changes the first layer's key and value states
    and leaves its query states exactly as they were.

    REM's adapters get random weights for the check (then their own back); the first layer's q/k/v are read from
    the attention function the architecture itself calls, with REM on and off.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    reference = next(base.parameters())
    if reference.device.type == "meta" or not hasattr(base, "set_attn_implementation"):
        return  # nothing to run (weights not materialised) or an architecture outside transformers' interface
    kind = type(base).__name__
    capture = CapturedAttention()
    previous = getattr(base.config, "_attn_implementation", None)
    saved = [{k: v.detach().clone() for k, v in rem.state_dict().items()} for w in wrappers for rem in _rems(w)]
    generator = torch.Generator().manual_seed(0)
    try:
        with torch.no_grad():
            for rem in (r for w in wrappers for r in _rems(w)):
                rem.up.weight.copy_(torch.randn(rem.up.weight.shape, generator=generator) * 0.1)
        base.set_attn_implementation(capture.name)
        vocab = base.get_input_embeddings().weight.shape[0]
        ids = torch.arange(1, 9, device=reference.device).remainder(vocab).unsqueeze(0)  # (1, 8)
        states = []
        for enabled in (True, False):
            with contextlib.nullcontext() if enabled else rem_disabled(model):
                states.append(capture.first_layer(lambda: base(input_ids=ids, use_cache=False)))
            if states[-1] is None:
                raise UnsupportedArchitectureError(
                    f"{kind}: cannot check where REM acts: the model does not call transformers' attention "
                    "interface. Supported: " + "; ".join(SUPPORTED_FAMILIES))
    except UnsupportedArchitectureError:
        raise
    except Exception as err:  # e.g. a fused layout read wrongly makes the attention's own reshape fail
        raise UnsupportedArchitectureError(
            f"{kind}: REM breaks this model's attention ({type(err).__name__}: {str(err).splitlines()[0][:160]}); "
            "its query/key/value layout is not one REM knows. Supported: " + "; ".join(SUPPORTED_FAMILIES)
        ) from None
    finally:
        if previous is not None:
            base.set_attn_implementation(previous)
        with torch.no_grad():
            for rem, state in zip((r for w in wrappers for r in _rems(w)), saved):
                rem.load_state_dict(state)
    (q_on, k_on, v_on), (q_off, k_off, v_off) = states
    problems = []
    if not torch.equal(q_on, q_off):
        problems.append(f"changes the query states (by up to {(q_on - q_off).abs().max().item():.3g})")
    if torch.equal(k_on, k_off):
        problems.append("leaves the key states unchanged")
    if torch.equal(v_on, v_off):
        problems.append("leaves the value states unchanged")
    if problems:
        raise UnsupportedArchitectureError(
            f"{kind}: REM as attached {' and '.join(problems)} of the first layer, so it is not where the paper puts "
            "it (on the key and value inputs only). Supported: " + "; ".join(SUPPORTED_FAMILIES))


def _rems(wrapper: nn.Module) -> list[nn.Module]:
    return [m for m in wrapper.children() if isinstance(m, (LowRankResidual, LowRankDelta))]


def rem_wrappers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, REM_WRAPPERS)]


def rem_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable REM weights of every wrapper (the ST pathway's own weights)."""
    return [p for w in rem_wrappers(model) for rem in _rems(w) for p in rem.parameters() if p.requires_grad]


@contextlib.contextmanager
def rem_disabled(model: nn.Module) -> Iterator[None]:
    """Run the model without REM (the CoT pathway); restores the previous state on exit, also on error."""
    wrappers = rem_wrappers(model)
    previous = [w.rem_enabled for w in wrappers]
    for w in wrappers:
        w.rem_enabled = False
    try:
        yield
    finally:
        for w, state in zip(wrappers, previous):
            w.rem_enabled = state


@torch.no_grad()
def merge_rem(model: nn.Module) -> int:
    """Fold every REM into its projection weight and remove the wrappers; returns how many were merged.

    LoRA must already be merged (the wrapped projections must be plain `nn.Linear` / `Conv1D`).
    """
    count = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, REM_WRAPPERS):
                plain = child.merged()
                if not torch.isfinite(plain.weight).all():
                    raise FloatingPointError(f"merging REM into {child_name} produced non-finite weights")
                setattr(parent, child_name, plain)
                count += 1
    return count
