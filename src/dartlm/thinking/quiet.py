"""Token-level thoughts (Quiet-STaR, Zelikman et al. 2024): a short thought before every token, in parallel.

For a sequence of T tokens, one ordinary forward pass gives the *base* predictions. Then every position t gets a
thought of its own, appended as new columns: a start-of-thought embedding, m = n_ahead - 2 thought tokens, an
end-of-thought embedding, then the next n_talk - 1 true tokens (teacher forcing). All T thoughts grow at once,
one column per forward pass, through the KV cache; the attention mask makes them independent: an appended token of
position t sees the original tokens 0..t and the earlier appended tokens of position t, nothing else. So the
parallel result equals running each position's thought on its own prefix (tests/test_quiet_star.py checks this
token for token). The state after the end-of-thought embedding (and after each teacher-forced token) is mixed with
the base state by the mixing head, (1 - w) h_base + w h_post, and goes through the LM head.

The start/end-of-thought embeddings are parameters of the head, not vocabulary entries: the LM head can never emit
them (Quiet-STaR masks them out of sampling for the same reason) and the exported model keeps the base vocabulary.
They are stored divided by `embedding_scale` (100, as Quiet-STaR) and multiplied back on use, which gives them a
larger effective learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from dartlm.model.export import QUIET_HEAD_FILE, PromptSpec
from dartlm.thinking.base import AnswerThinking, PromptNotExpressibleError, Thinking
from dartlm.thinking.decoding import Decoded, SequenceRunner, greedy_continue, positions_from_mask

HEAD_ATTRIBUTE = "quiet_head"
START, END = 0, 1


class QuietHead(nn.Module):
    """The start/end-of-thought embeddings and the mixing head of Quiet-STaR's weighted variant.

    mixer: [h_base; h_post] (2n) -> n -> ReLU -> n -> ReLU -> 1, the last layer zero-initialised, so that the
    mixing weight w starts at exactly 0 and the mixed prediction starts as the base prediction. As in Quiet-STaR,
    w is not squashed.
    """

    def __init__(self, hidden: int, meta_init: torch.Tensor | None = None, embedding_scale: float = 100.0):
        super().__init__()
        self.register_buffer("embedding_scale", torch.tensor(float(embedding_scale)))
        init = torch.zeros(2, hidden) if meta_init is None else meta_init.detach().float().clone()
        self.meta = nn.Parameter(init / embedding_scale)  # rows START, END
        self.mixer = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                   nn.Linear(hidden, 1))
        nn.init.zeros_(self.mixer[-1].weight)
        nn.init.zeros_(self.mixer[-1].bias)

    def meta_embedding(self, which: int) -> torch.Tensor:
        """(n,) the start (0) or end (1) of thought embedding."""
        return self.meta[which] * self.embedding_scale

    def mixing_weight(self, h_base: torch.Tensor, h_post: torch.Tensor) -> torch.Tensor:
        """(..., 1) the mixing weight w."""
        dtype = self.meta.dtype
        return self.mixer(torch.cat([h_base.to(dtype), h_post.to(dtype)], dim=-1))

    def mix(self, h_base: torch.Tensor, h_post: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        """(1 - w) h_base + w h_post; w: the mixing weight when already computed."""
        w = (self.mixing_weight(h_base, h_post) if w is None else w).to(h_base.dtype)
        return (1 - w) * h_base + w * h_post


def meta_init_embedding(model: nn.Module, tokenizer, text: str = "---") -> torch.Tensor:
    """(2, n): Quiet-STaR initialises both meta embeddings to the embedding of "---" (the mean over its tokens; the
    mean of all rows when the tokenizer has no tokens for it)."""
    weight = model.get_input_embeddings().weight.detach()
    ids = [i for i in tokenizer(text, add_special_tokens=False)["input_ids"] if i < weight.shape[0]]
    row = weight[ids].mean(0) if ids else weight.mean(0)
    return torch.stack([row, row]).float()


def thought_head(model: nn.Module) -> QuietHead:
    head = getattr(model, HEAD_ATTRIBUTE, None)
    if head is None:
        raise ValueError(f"the model has no {HEAD_ATTRIBUTE}: it was not trained or loaded as a Quiet-STaR model")
    return head


def mixed_logits(model: nn.Module, head: QuietHead, h_base: torch.Tensor, h_post: torch.Tensor,
                 w: torch.Tensor | None = None) -> torch.Tensor:
    return model.get_output_embeddings()(head.mix(h_base, h_post, w))


# --- thoughts at every position, in parallel -------------------------------------------------------------------


def thought_mask(owners_q: torch.Tensor, columns_q: torch.Tensor, owners_k: torch.Tensor, columns_k: torch.Tensor,
                 valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive 4D attention mask (B, 1, Q, K) of appended thought tokens.

    Every token carries the position it belongs to (owner) and its column (0: the original sequence). A query
    (t, c) sees an original token s when s <= t and s is not padding, and an appended token when it belongs to the
    same position t and its column is <= c; every token sees itself (so that a left-padding token, which has
    nothing else to see, gets finite numbers). valid (B, T): the attention mask of the original sequence.
    """
    original = (columns_k == 0)[None, :] & (owners_k[None, :] <= owners_q[:, None])  # (Q, K)
    own = (columns_k > 0)[None, :] & (owners_k[None, :] == owners_q[:, None]) & (columns_k[None, :] <= columns_q[:, None])
    key_valid = valid.bool()[:, owners_k] | (columns_k > 0)[None, :]  # (B, K): padding only among originals
    itself = (owners_k[None, :] == owners_q[:, None]) & (columns_k[None, :] == columns_q[:, None])
    allowed = ((original | own)[None] & key_valid[:, None, :]) | itself[None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=valid.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


class ParallelRunner:
    """Appends columns of tokens to every position of a batch of sequences, each column one forward pass.

    The original sequence (B, T) runs first; `feed(embeds)` then takes (B, P, w, n): w new columns at once for
    each of the P thinking positions `at` (default: all T), each position's tokens in column order. With `use_cache` each pass reuses the keys and values of the previous ones;
    without it the whole sequence so far runs again (the same numbers: the reference the cache is tested against).
    """

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, use_cache: bool = True,
                 at: torch.Tensor | None = None):
        self.model, self.use_cache = model, use_cache
        self.valid = attention_mask
        batch, length = input_ids.shape
        self.length = length
        self.positions = positions_from_mask(attention_mask)  # (B, T)
        device = input_ids.device
        self.owners = torch.arange(length, device=device)
        self.at = self.owners if at is None else at.to(device)
        self.columns = torch.zeros(length, dtype=torch.long, device=device)
        self.embeds = model.get_input_embeddings()(input_ids)
        self.cache = None
        self.passes = 0
        self.base = self._run(self.embeds, self.owners, self.columns)

    def _run(self, embeds: torch.Tensor, owners: torch.Tensor, columns: torch.Tensor):
        """Run new tokens (B, k, n) with their owners/columns (k,); returns the model output on them."""
        if self.passes:  # the original sequence is already in: extend the bookkeeping
            self.owners = torch.cat([self.owners, owners])
            self.columns = torch.cat([self.columns, columns])
        dtype = embeds.dtype
        if self.use_cache or not self.passes:
            queries_o, queries_c, fed = owners, columns, embeds
        else:
            self.embeds = torch.cat([self.embeds, embeds], dim=1)
            queries_o, queries_c, fed = self.owners, self.columns, self.embeds
        mask = thought_mask(queries_o, queries_c, self.owners, self.columns, self.valid, dtype)
        positions = self.positions[:, queries_o] + queries_c[None, :]
        kwargs = {"past_key_values": self.cache, "use_cache": True} if self.use_cache else {"use_cache": False}
        out = self.model(inputs_embeds=fed, attention_mask=mask, position_ids=positions, output_hidden_states=True,
                         **kwargs)
        if self.use_cache:
            self.cache = out.past_key_values
        self.passes += 1
        k = embeds.shape[1]
        return out.logits[:, -k:], out.hidden_states[-1][:, -k:]

    def feed(self, embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """embeds (B, P, w, n): w new columns for each thinking position -> (logits (B, P, w, V), last hidden
        (B, P, w, n))."""
        batch, length, width, hidden = embeds.shape
        first = int(self.columns.max()) + 1
        columns = torch.arange(first, first + width, device=embeds.device).repeat_interleave(length)
        owners = self.at.repeat(width)
        flat = embeds.transpose(1, 2).reshape(batch, width * length, hidden)  # column-major: column by column
        logits, states = self._run(flat, owners, columns)
        unflat = lambda x: x.reshape(batch, width, length, -1).transpose(1, 2)  # noqa: E731
        return unflat(logits), unflat(states)


@dataclass
class Thoughts:
    """One thought per thinking position `at` (P,). base_*: the ordinary forward, (B, T, ...); thought_ids /
    logprobs (B, P, m); post_hidden (B, P, n_talk, n): the states that predict the true tokens t+1 .. t+n_talk
    after the thought of position t."""

    base_logits: torch.Tensor
    base_hidden: torch.Tensor
    thought_ids: torch.Tensor
    logprobs: torch.Tensor
    post_hidden: torch.Tensor
    passes: int
    at: torch.Tensor


def choose_tokens(logits: torch.Tensor, sample: bool, temperature: float = 1.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Greedy, or a sample (Gumbel-max, the same draw as a hard Gumbel-softmax) at `temperature`."""
    if not sample:
        return logits.argmax(-1)
    uniform = torch.rand(logits.shape, device=logits.device, generator=generator).clamp_(1e-20, 1.0)
    gumbel = -torch.log(-torch.log(uniform))
    return (logits.detach().float() / temperature + gumbel).argmax(-1)


def think_in_parallel(model, head: QuietHead, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                      n_ahead: int, n_talk: int, sample: bool, temperature: float = 1.0,
                      reinforce_temperature: float = 3.0, use_cache: bool = True,
                      generator: torch.Generator | None = None, forced: torch.Tensor | None = None,
                      at: torch.Tensor | None = None) -> Thoughts:
    """A thought of n_ahead tokens (start, n_ahead - 2 thought tokens, end) at every position, then the next
    n_talk - 1 true tokens, teacher-forced. Forward passes: 1 (the sequence) + n_ahead - 1.

    logprobs: log_softmax(logits / reinforce_temperature) at the chosen ids (what REINFORCE weights).
    forced (B, P, n_ahead - 2): think these thought tokens instead of choosing them (to score a given thought).
    at (P,): the positions that think (default all): thoughts are independent, so thinking only where a loss
    needs them gives the same thoughts there at a fraction of the cost.
    """
    if n_ahead < 2 or n_talk < 1:
        raise ValueError(f"n_ahead must be >= 2 (start and end) and n_talk >= 1, got {n_ahead} and {n_talk}")
    runner = ParallelRunner(model, input_ids, attention_mask, use_cache=use_cache, at=at)
    base_logits, base_hidden = runner.base
    batch, length = input_ids.shape[0], runner.at.shape[0]
    embed = model.get_input_embeddings()
    dtype = base_hidden.dtype

    def meta(which: int) -> torch.Tensor:
        return head.meta_embedding(which).to(dtype).expand(batch, length, 1, -1)

    thinking = n_ahead - 2
    ids, logprobs = [], []
    logits = runner.feed(meta(START))[0][:, :, 0] if thinking else None
    for j in range(thinking):
        token = forced[:, :, j] if forced is not None else choose_tokens(logits, sample, temperature, generator)
        logprobs.append(torch.log_softmax(logits.float() / reinforce_temperature, -1).gather(-1, token[..., None])[..., 0])
        ids.append(token)
        if j < thinking - 1:
            logits = runner.feed(embed(token)[:, :, None])[0][:, :, 0]
    # The last block: the last thought token, the end of thought and the teacher-forced true tokens, in one pass.
    padded = torch.cat([input_ids, input_ids.new_zeros(batch, n_talk)], dim=1)
    ahead = [padded[:, runner.at + i] for i in range(1, n_talk)]
    block = ([embed(ids[-1])[:, :, None]] if thinking else [meta(START)]) + [meta(END)]
    block += [embed(t)[:, :, None] for t in ahead]
    _, states = runner.feed(torch.cat(block, dim=2))
    empty = input_ids.new_zeros(batch, length, 0)
    return Thoughts(base_logits, base_hidden,
                    torch.stack(ids, -1) if ids else empty,
                    torch.stack(logprobs, -1) if logprobs else empty.float(),
                    states[:, :, 1:], runner.passes, runner.at)


# --- inference: a thought before every generated token ---------------------------------------------------------


@torch.no_grad()
def quiet_decode(model, runner: SequenceRunner, step_hidden: torch.Tensor, *, n_ahead: int, max_new_tokens: int,
                 eos_token_id: int, pad_token_id: int, min_new_tokens: int = 0) -> Decoded:
    """Greedy decoding that thinks before each token; the runner has been fed the prompt, whose last state is
    step_hidden (B, n). Each token costs n_ahead - 1 passes for the thought (start, thought tokens, end) and one to
    feed it; the thought's keys and values are dropped from the cache before the chosen token goes in.
    """
    head = thought_head(model)
    batch = step_hidden.shape[0]
    dtype = runner.embed.weight.dtype
    thinking = n_ahead - 2

    def meta(which: int) -> torch.Tensor:
        return head.meta_embedding(which).to(dtype).expand(batch, 1, -1)

    def think(h_base: torch.Tensor) -> torch.Tensor:
        """The next token's logits after a thought from where the runner is; the thought is then forgotten."""
        kept = runner.length
        if thinking:
            logits = runner.feed(meta(START)).logits[:, -1]
            for j in range(thinking):
                token = logits.argmax(-1)
                if j < thinking - 1:
                    logits = runner.feed_ids(token[:, None]).logits[:, -1]
            last = torch.cat([runner.embed(token[:, None]), meta(END)], dim=1)
        else:
            last = torch.cat([meta(START), meta(END)], dim=1)
        h_post = runner.feed(last, hidden_states=True).last_hidden
        runner.rewind(kept)
        return mixed_logits(model, head, h_base, h_post)

    decoded = greedy_continue(
        runner, think(step_hidden), max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
        pad_token_id=pad_token_id, min_new_tokens=min_new_tokens,
        next_logits=lambda token: think(runner.feed_ids(token[:, None], hidden_states=True).last_hidden))
    # A row thought once before each token it chose, its eos included: len + 1 thoughts, unless it ran to the end
    # of the decoding (as many thoughts as tokens). The decoding ran for `steps` tokens.
    steps = min(max_new_tokens, max((len(row) + 1 for row in decoded.tokens), default=0))
    decoded.thought_tokens = [thinking * min(len(row) + 1, steps) for row in decoded.tokens]
    return decoded


# --- the way of thinking of an exported Quiet-STaR model -------------------------------------------------------


class QuietThinking(Thinking):
    """The answer prompt without thought tokens; before each answer token a thought of quiet_n_ahead tokens
    (start and end included), mixed in by the head saved in `quiet_head.safetensors`."""

    name = "quiet"
    token_prompted = False
    side_modules = {HEAD_ATTRIBUTE: QUIET_HEAD_FILE}

    def build_side_module(self, attribute: str, hidden: int, spec: PromptSpec) -> nn.Module:
        return QuietHead(hidden)

    def thought_ids(self, tokenizer, spec: PromptSpec) -> list[int]:
        return []

    @torch.no_grad()
    def decode(self, model, tokenizer, spec: PromptSpec, batch: dict[str, torch.Tensor], *, max_new_tokens: int,
               min_new_tokens: int = 0, use_cache: bool = True) -> Decoded:
        runner = SequenceRunner(model, use_cache=use_cache)
        step = runner.feed_ids(batch["input_ids"], batch["attention_mask"], hidden_states=True)
        return quiet_decode(model, runner, step.last_hidden, n_ahead=spec.quiet_n_ahead,
                            max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)

    def prompt_text(self, question: str, spec: PromptSpec) -> str:
        raise PromptNotExpressibleError(
            f"a {spec.method} model thinks before every answer token through its mixing head, which lm-eval's "
            "plain generation does not run; evaluate it with `dartlm eval`")

    def layout(self, spec: PromptSpec, bos: str, separator: str) -> str:
        return (f"{bos}question + {separator}, then the answer, thinking before each answer token: a start-of-thought "
                f"embedding, {spec.quiet_n_ahead - 2} greedy thought tokens and an end-of-thought embedding, whose "
                f"state the mixing head of `{QUIET_HEAD_FILE}` mixes with the thought-free one (the thought is "
                "then dropped)")

    def snippet(self, spec: PromptSpec, bos: str, separator: str) -> list[str]:
        return [
            "from safetensors.torch import load_file",
            f"head = load_file({QUIET_HEAD_FILE!r})  # the mixing head and the start/end-of-thought embeddings",
            "n = model.config.hidden_size",
            "mixer = torch.nn.Sequential(torch.nn.Linear(2 * n, n), torch.nn.ReLU(), torch.nn.Linear(n, n),",
            "                            torch.nn.ReLU(), torch.nn.Linear(n, 1))",
            'mixer.load_state_dict({k[len("mixer."):]: v for k, v in head.items() if k.startswith("mixer.")})',
            'start, end = (head["meta"] * head["embedding_scale"])[:, None, None]  # (1, 1, n) each',
            "embed = model.get_input_embeddings()",
            f"ids = {bos}encode(question) + encode({separator})",
            "with torch.no_grad():",
            "    inputs = embed(torch.tensor([ids]))",
            "    answer = []",
            f"    for _ in range({self.max_new_tokens}):  # greedy; a thought before every answer token",
            "        h_base = model(inputs_embeds=inputs, output_hidden_states=True).hidden_states[-1][:, -1]",
            "        thought = torch.cat([inputs, start], dim=1)",
            f"        for _ in range({spec.quiet_n_ahead - 2}):  # the thought's tokens, greedy",
            "            token = model(inputs_embeds=thought).logits[:, -1].argmax(-1)",
            "            thought = torch.cat([thought, embed(token[:, None])], dim=1)",
            "        thought = torch.cat([thought, end], dim=1)",
            "        h_post = model(inputs_embeds=thought, output_hidden_states=True).hidden_states[-1][:, -1]",
            "        w = mixer(torch.cat([h_base, h_post], dim=-1))",
            "        token = model.get_output_embeddings()((1 - w) * h_base + w * h_post)[0].argmax().item()",
            "        if token == tokenizer.eos_token_id:",
            "            break",
            "        answer.append(token)  # the thought is dropped; the token is kept",
            "        inputs = torch.cat([inputs, embed(torch.tensor([[token]]))], dim=1)",
            "print(tokenizer.decode(answer, skip_special_tokens=True).strip())",
        ]

    def probed_thoughts(self, spec: PromptSpec) -> int:
        return 0  # its thoughts come after the prompt, one per answer token: z_N is the prompt's last state

    def without_thoughts(self, spec: PromptSpec) -> PromptSpec:
        """The spec answering from the thought-free state alone (the mixing weight at 0): what the answers are
        worth without thinking, an ablation at inference."""
        return replace(spec, decode=AnswerThinking.name, num_thought_tokens=0, quiet_n_ahead=0)
