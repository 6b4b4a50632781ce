"""Shared fixtures: tokenizers trained on the spot and tiny random-initialised models of each family."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from transformers import AutoModelForCausalLM

from dartlm.data.example import Example
from dartlm.model.tiny import tiny_config, train_tokenizer

CORPUS = [
    "Tom has 3 apples and buys 15 more. How many apples does he have? <<3+15=18>> Answer: 18",
    "A shop sells 12 pens a day for 7 days. How many pens? <<12*7=84>> Answer: 84",
    "Ann had 40 dollars and spent 9. Then she earned 25. How much now? <<40-9=31>> <<31+25=56>> Answer: 56",
    "Every gerpus is a terpus. Sally is a gerpus. Is Sally a terpus or a lempus? Sally is a terpus.",
] * 20

FAMILIES = {
    "llama": dict(family="llama", tie=False),
    "qwen2-gqa": dict(family="qwen2", heads=4, kv_heads=2, tie=False),
    "gpt2": dict(family="gpt2"),
    "phi3-gqa": dict(family="phi3", heads=4, kv_heads=2, tie=False),  # fused qkv_proj: [q | k | v]
    "gpt-neox": dict(family="gpt_neox"),  # fused query_key_value, interleaved per head
}
FUSED_FAMILIES = ("gpt2", "phi3-gqa", "gpt-neox")


@pytest.fixture(scope="session", params=["byte-level", "metaspace"])
def any_tokenizer(request):
    return train_tokenizer(CORPUS, vocab_size=300, style=request.param)


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=300, style="byte-level")


def make_model(name: str, vocab_size: int, seed: int = 0):
    """A tiny fp32 model of one family, deterministic for a seed, in eval mode."""
    torch.manual_seed(seed)
    spec = dict(FAMILIES[name])
    model = AutoModelForCausalLM.from_config(tiny_config(vocab_size=vocab_size, **spec))
    return model.eval()


@pytest.fixture
def example():
    return Example(
        question="Ann had 40 dollars and spent 9. Then she earned 25. How much now?",
        steps=("<<40-9=31>>", "<<31+25=56>>"),
        answer="56",
        origin="fixture:1",
    )


def write_arithmetic_file(path, count: int = 64, seed: int = 0) -> None:
    """A small iCoT-format training file of two-step problems; every number has two digits, so every example
    has the same token count (per-rank means then equal the global mean in the two-process test)."""
    import random

    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        a, b, c = rng.randint(10, 40), rng.randint(10, 40), rng.randint(2, 2)
        total = (a + b) * c
        lines.append(
            f"Tom has {a} apples and buys {b} more. He doubles them. How many apples?"
            f"||<<{a}+{b}={a + b}>> <<{a + b}*{c}={total}>> #### {total}"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def train_file(tmp_path):
    path = tmp_path / "train.txt"
    write_arithmetic_file(path)
    return path


@pytest.fixture
def fault_rng():
    """A seeded random source for fault tests; the seed is printed (pytest -s, or in a failure's captured output)
    and DARTLM_FAULT_SEED replays it."""
    import random

    seed = int(os.environ.get("DARTLM_FAULT_SEED", random.SystemRandom().randrange(1 << 30)))
    print(f"fault seed: {seed} (replay with DARTLM_FAULT_SEED={seed})")
    return random.Random(seed)


def randomise_adapters(model, seed: int = 0, scale: float = 0.05, *, only: str | None = None, add: bool = False):
    """Give trainable weights (or those whose name contains `only`) random values, so that every adapter shapes the
    output (LoRA's B and REM's up start at zero). add: add the noise to the current values instead of replacing
    them. Returns the model."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if (only in name) if only else param.requires_grad:
                noise = torch.randn(param.shape, generator=gen) * scale
                param.add_(noise) if add else param.copy_(noise)
    return model


def dart_features(example, tokenizer, st_token_id: int, num_thoughts: int):
    """One example's teacher and student sequences, as DART's training lays them out (DartMethod.encode)."""
    from dartlm.config import MethodConfig
    from dartlm.methods import get_method

    return get_method(MethodConfig(name="dart", num_thought_tokens=num_thoughts)).encode(example, tokenizer,
                                                                                         st_token_id)
