"""The three baselines that are plain layouts of the same pipeline: CoT, No-CoT and PauseFT."""

from __future__ import annotations

from dartlm.data.layout import build_pathway
from dartlm.losses import answer_loss, cot_pathway_loss
from dartlm.methods.base import Method, forward, thoughts
from dartlm.model.adapters import PAUSE_TOKEN
from dartlm.thinking import ChainThinking


class CotMethod(Method):
    """SFT on `Q CoT Answer: Y`; the same loss as DART's teacher pathway (two means, summed)."""

    title = "CoT"
    description = (
        "Fine-tuned on chains of thought: it writes its reasoning, then the separator and the answer."
    )

    name = "cot"
    decode = ChainThinking.name

    def layout(self, segments, thought_id):
        return build_pathway(segments, None)

    def loss(self, model, batch, backward=None):
        logits = forward(model, batch).logits
        return cot_pathway_loss(logits, batch["input_ids"], batch["roles"]), {}


class NoCotMethod(Method):
    """SFT on `Q Answer: Y`, CE on the answer."""

    title = "No-CoT"
    description = (
        "Fine-tuned on answers alone: it answers right after the question and the separator."
    )

    name = "nocot"

    def layout(self, segments, thought_id):
        return build_pathway(segments, [])

    def loss(self, model, batch, backward=None):
        logits = forward(model, batch).logits
        return answer_loss(logits, batch["input_ids"], batch["roles"]), {}


class PauseMethod(NoCotMethod):
    """PauseFT (Goyal et al. 2024): `Q <pause>*C Answer: Y`, CE on the answer; DART's ST pathway alone."""

    title = "PauseFT"
    description = (
        "Fine-tuned with pause tokens: it answers after a fixed number of `<pause>` tokens, in one pass."
    )

    name = "pause"
    thought_token = PAUSE_TOKEN

    def layout(self, segments, thought_id):
        return build_pathway(segments, thoughts(thought_id, self.num_thoughts))
