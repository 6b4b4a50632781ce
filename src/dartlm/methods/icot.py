"""iCoT, stepwise internalization (Deng et al. 2024): CoT fine-tuning while the CoT is removed from the left.

At `epoch` the first floor(tokens_per_epoch * epoch) CoT tokens of every example are gone, plus a random extra
offset o with P(o) ~ exp(-smoothing * o) per example (removal smoothing); past `remove_all_after` scheduled tokens
the whole CoT goes. The optimizer is reset whenever the scheduled count rises (the trainer does it on a change of
`schedule_key`). By the end the model answers from `Q Answer:` directly, which is how it is decoded.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

from dartlm.config import ConfigError, MethodSettings
from dartlm.data.layout import build_pathway, pad_pathways, segment_example
from dartlm.losses import cot_pathway_loss
from dartlm.methods.base import Method, forward


@dataclass
class IcotSettings(MethodSettings):
    # CoT tokens removed from the left, this many more per epoch; a random extra offset o with
    # P(o) ~ exp(-smoothing * o) per example (0: none); the whole CoT goes once the schedule reaches
    # remove_all_after tokens (-1: only when the CoT runs out).
    icot_tokens_per_epoch: float = 8.0
    icot_smoothing: float = 4.0
    icot_remove_all_after: int = -1

    def validate(self, where: str) -> None:
        if not self.icot_tokens_per_epoch > 0 or not self.icot_smoothing >= 0:
            raise ConfigError(f"{where}: method.icot_tokens_per_epoch must be > 0 and method.icot_smoothing >= 0, "
                              f"got {self.icot_tokens_per_epoch} and {self.icot_smoothing}")


class IcotMethod(Method):

    title = "iCoT"
    description = (
        "Trained by stepwise internalisation of the chain of thought (its tokens removed from the left on a "
        "schedule): it answers right after the question and the separator."
    )
    name = "icot"
    settings_class = IcotSettings
    curriculum = True

    def encode(self, example, tokenizer, thought_id):
        return segment_example(example, tokenizer, self.format)  # laid out per step, as the schedule says

    def layout(self, segments, thought_id):
        return build_pathway(segments, None)

    def length(self, segments):
        return len(self.layout(segments, None))

    def collate(self, features, pad_token_id):
        return {"segments": list(features), "pad_token_id": pad_token_id}

    def scheduled(self, epoch: float) -> int:
        """CoT tokens removed from every example at `epoch` (before the random offset); -1 means all of them."""
        count = math.floor(self.settings.icot_tokens_per_epoch * epoch + 1e-9)
        threshold = self.settings.icot_remove_all_after
        return -1 if 0 <= threshold <= count else count

    def schedule_key(self, epoch, step=None):
        return self.scheduled(epoch)

    def removed(self, cot_length: int, rng: random.Random) -> int:
        """Tokens removed from one example's CoT now."""
        count = self.scheduled(self.epoch)
        if count < 0:
            return cot_length
        if self.settings.icot_smoothing > 0:
            count += sample_offset(self.settings.icot_smoothing, cot_length, rng)
        return min(count, cot_length)

    def batch(self, inputs, device):
        rng = random.Random(self.step)  # deterministic per step, so a resumed run removes the same tokens
        pathways, removed = [], []
        for seg in inputs["segments"]:
            cut = self.removed(len(seg.cot), rng)
            removed.append(cut)
            pathways.append(build_pathway(replace(seg, cot=seg.cot[cut:]), None))
        tensors = {k: v.to(device) for k, v in pad_pathways(pathways, inputs["pad_token_id"]).items()}
        return tensors, sum(removed) / len(removed)

    def loss(self, model, batch, backward=None):
        tensors, mean_removed = self.batch(batch, next(model.parameters()).device)
        logits = forward(model, tensors).logits
        return cot_pathway_loss(logits, tensors["input_ids"], tensors["roles"]), {"cot_tokens_removed": mean_removed}


def sample_offset(smoothing: float, limit: int, rng: random.Random) -> int:
    """o in 0..limit with P(o) proportional to exp(-smoothing * o)."""
    weights = [math.exp(-smoothing * o) for o in range(limit + 1)]
    return rng.choices(range(limit + 1), weights=weights)[0]
