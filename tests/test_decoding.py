"""Our greedy KV-cache loop against transformers' generate, and batched against one-by-one."""

from __future__ import annotations

import pytest

from conftest import FAMILIES, make_model
from dartlm.thinking.decoding import greedy_decode
from dartlm.generate import left_padded


@pytest.mark.parametrize("family", FAMILIES)
def test_matches_transformers_generate_under_left_padding(family, tokenizer):
    model = make_model(family, len(tokenizer), seed=3)
    prompts = [tuple(range(5, 12)), tuple(range(20, 23)), tuple(range(40, 50))]
    batch = left_padded(prompts, tokenizer.pad_token_id)
    # An eos the random model never picks, so every row runs the full length in both implementations.
    eos = len(tokenizer) - 1
    ours = greedy_decode(model, batch["input_ids"], batch["attention_mask"], max_new_tokens=8,
                         eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    theirs = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=8,
                            do_sample=False, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    assert ours.tokens == theirs[:, batch["input_ids"].shape[1]:].tolist()
    assert ours.forward_passes == 8
    # Batched equals one by one.
    for row, prompt in enumerate(prompts):
        single = left_padded([prompt], tokenizer.pad_token_id)
        alone = greedy_decode(model, single["input_ids"], single["attention_mask"], max_new_tokens=8,
                              eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
        assert alone.tokens[0] == ours.tokens[row]


def test_stops_at_eos_and_min_new_tokens_pins_the_length(tokenizer):
    model = make_model("llama", len(tokenizer), seed=3)
    batch = left_padded([tuple(range(5, 12))], tokenizer.pad_token_id)
    free = greedy_decode(model, batch["input_ids"], batch["attention_mask"], max_new_tokens=6,
                         eos_token_id=len(tokenizer) - 1, pad_token_id=0)
    # Declare the first token that the model picks for the first time after step 0 to be eos: decoding stops there.
    row = free.tokens[0]
    cut = next(i for i in range(1, len(row)) if row[i] not in row[:i])
    eos = row[cut]
    stopped = greedy_decode(model, batch["input_ids"], batch["attention_mask"], max_new_tokens=6,
                            eos_token_id=eos, pad_token_id=0)
    assert stopped.tokens[0] == row[:cut]
    assert stopped.forward_passes == cut + 1
    pinned = greedy_decode(model, batch["input_ids"], batch["attention_mask"], max_new_tokens=6, min_new_tokens=6,
                           eos_token_id=eos, pad_token_id=0)
    assert len(pinned.tokens[0]) == 6 and eos not in pinned.tokens[0]
    assert pinned.forward_passes == 6
