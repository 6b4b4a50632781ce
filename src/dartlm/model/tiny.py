"""Tiny from-scratch assets: a tokenizer trained locally and small model configs of each supported family.

Used by the tests and by the CPU demo, where a vocabulary of a few hundred to a few thousand tokens keeps training
fast (a 50k vocabulary alone costs 6x on 2 cores).
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoConfig, PreTrainedConfig, PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>")


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, style: str = "byte-level") -> PreTrainedTokenizerFast:
    """Train a BPE tokenizer that splits digits, in the GPT-2 / Llama-3 ("byte-level") or SentencePiece
    ("metaspace", Llama-2 / Mistral / Gemma) style.

    Digits are single tokens so that arithmetic is learnable by a tiny model from little data.
    """
    if style == "byte-level":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
        tokenizer.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    elif style == "metaspace":
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Metaspace(), pre_tokenizers.Digits(individual_digits=True)]
        )
        tokenizer.decoder = decoders.Metaspace()
        alphabet = list("0123456789")
    else:
        raise ValueError(f"unknown tokenizer style {style!r}; expected 'byte-level' or 'metaspace'")
    specials = list(SPECIAL_TOKENS) + (["<unk>"] if style == "metaspace" else [])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>" if style == "byte-level" else None,
        pad_token="<|pad|>",
        unk_token="<unk>" if style == "metaspace" else None,
    )


def tiny_config(family: str, vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4,
                kv_heads: int | None = None, tie: bool = False, max_positions: int = 512) -> PreTrainedConfig:
    """A small random-initialisable config of one family: "llama", "qwen2" (grouped-query), "gpt2", "phi3"
    (fused grouped-query `qkv_proj`) or "gpt_neox" (fused, per-head interleaved `query_key_value`)."""
    if family == "phi3":
        # pad_token_id: Phi-3's default (32000) would not fit a tiny vocabulary.
        return AutoConfig.for_model(
            "phi3", vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 4,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
            max_position_embeddings=max_positions, original_max_position_embeddings=max_positions,
            tie_word_embeddings=tie, bos_token_id=0, eos_token_id=0, pad_token_id=0,
            resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0,
        )
    if family == "gpt_neox":
        return AutoConfig.for_model(
            "gpt_neox", vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 4,
            num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=max_positions,
            tie_word_embeddings=tie, bos_token_id=0, eos_token_id=0, hidden_dropout=0.0, attention_dropout=0.0,
        )
    if family == "gpt2":
        return AutoConfig.for_model(
            "gpt2", vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=max_positions,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
            bos_token_id=0, eos_token_id=0,
        )
    if family not in ("llama", "qwen2"):
        raise ValueError(f"unknown tiny family {family!r}; expected llama, qwen2, gpt2, phi3 or gpt_neox")
    return AutoConfig.for_model(
        family, vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 4,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
        max_position_embeddings=max_positions, tie_word_embeddings=tie, bos_token_id=0, eos_token_id=0,
    )


# A small corpus of word-problem text: enough for a tokenizer that encodes such problems compactly (any other
# text still encodes, byte by byte).
TINY_CORPUS = [
    f"{name} has {a} {thing} and {verb} {b} more. How many {thing} does {name} have now? "
    f"<<{a}+{b}={a + b}>> <<{a + b}*2={2 * (a + b)}>> Answer: {a + b}"
    for name in ("Tom", "Ann", "Sam", "Lily", "The shop", "A farmer", "Every student")
    for thing, verb in (("apples", "buys"), ("eggs", "gets"), ("dollars", "earns"), ("books", "reads"),
                        ("pens", "sells"), ("miles", "drives"), ("cookies", "bakes"))
    for a, b in ((3, 15), (12, 7), (40, 9))
] + [
    "Every gerpus is a terpus. Sally is a gerpus. Is Sally a terpus or a lempus? Sally is a terpus.",
    "What is the total cost if each item costs 4 dollars and she buys 6 items per week for 3 weeks?",
    "He spent half of his money, then a third of the rest, and had 10 left. How much did he start with?",
]


def build_tiny_tokenizer(out_dir: str) -> None:
    train_tokenizer(TINY_CORPUS, vocab_size=384, style="byte-level").save_pretrained(out_dir)


if __name__ == "__main__":
    import sys

    build_tiny_tokenizer(sys.argv[1])
