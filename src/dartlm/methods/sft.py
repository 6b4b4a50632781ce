"""The three baselines that are plain layouts of the same pipeline: CoT, No-CoT and PauseFT."""

from __future__ import annotations

from dartlm.data.layout import build_pathway
from dartlm.losses import answer_loss, cot_pathway_loss
from dartlm.methods.base import Method, forward, thoughts
from dartlm.model.adapters import PAUSE_TOKEN


class CotMethod(Method):
    """SFT on `Q CoT Answer: Y`; the same loss as DART's teacher pathway (two means, summed)."""

    name = "cot"
    decode = "cot"

    def layout(self, segments, thought_id):
        return build_pathway(segments, None)

    def loss(self, model, batch, backward=None):
        logits = forward(model, batch).logits
        return cot_pathway_loss(logits, batch["input_ids"], batch["roles"]), {}


class NoCotMethod(Method):
    """SFT on `Q Answer: Y`, CE on the answer."""

    name = "nocot"

    def layout(self, segments, thought_id):
        return build_pathway(segments, [])

    def loss(self, model, batch, backward=None):
        logits = forward(model, batch).logits
        return answer_loss(logits, batch["input_ids"], batch["roles"]), {}


class PauseMethod(NoCotMethod):
    """PauseFT (Goyal et al. 2024): `Q <pause>*C Answer: Y`, CE on the answer; DART's ST pathway alone."""

    name = "pause"
    thought_token = PAUSE_TOKEN

    def layout(self, segments, thought_id):
        return build_pathway(segments, thoughts(thought_id, self.num_thoughts))
