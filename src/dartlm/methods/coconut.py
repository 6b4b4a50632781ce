"""Coconut (Hao et al. 2024): a staged curriculum from language CoT to continuous thoughts.

Stage k (one every `epochs_per_stage` epochs, up to `max_stages`) replaces the first k CoT steps of every example
by k * c continuous thoughts (c = thoughts_per_step): `[bos] Q <bot> (k*c thoughts) <eot> steps[k:] SEP Y eos`,
cross-entropy on the remaining steps, the separator and the answer (one mean, as Coconut's LM loss). The last
stage drops every language step. All rows of a batch carry k*c thoughts (Coconut's "pad latents to max"), so the
thought passes stay aligned across rows. The optimizer is reset at every new stage, as in Coconut. Inference:
max_stages * c thoughts, then `<eot> SEP` and the answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from dartlm.config import ConfigError, MethodSettings
from dartlm.data.layout import ANSWER, PROMPT, REASONING, Pathway, Segments, segment_example, step_ids
from dartlm.losses import masked_mean, token_cross_entropy
from dartlm.methods.base import Method
from dartlm.model.export import PromptSpec
from dartlm.thinking.latent import BOT_TOKEN, EOT_TOKEN, LatentThinking, latent_batch, run_latent_pathway


@dataclass(frozen=True)
class LatentFeatures:
    """One example, tokenised: its segments, its CoT steps one by one, and the marker ids."""

    segments: Segments
    steps: tuple[tuple[int, ...], ...]
    bot: int
    eot: int


def latent_prefix(features: LatentFeatures) -> tuple[int, ...]:
    return features.segments.prefix + features.segments.question + (features.bot,)


def latent_suffix(features: LatentFeatures, steps: tuple[tuple[int, ...], ...]) -> Pathway:
    """<eot> + the given language steps + SEP + answer, with roles; anchor = z_N (last separator token)."""
    seg = features.segments
    parts = [((features.eot,), PROMPT), (tuple(t for s in steps for t in s), REASONING), (seg.separator, REASONING),
             (seg.answer, ANSWER)]
    ids, roles = [], []
    for tokens, role in parts:
        ids.extend(tokens)
        roles.extend([role] * len(tokens))
    anchor = 1 + sum(len(s) for s in steps) + len(seg.separator) - 1
    return Pathway(tuple(ids), tuple(roles), anchor)


class LatentMethod(Method):
    """What Coconut and CODI share: the markers, the features and the way they decode."""

    decode = LatentThinking.name
    projection = False  # CODI feeds thoughts through a projection

    @property
    def special_tokens(self):
        return (BOT_TOKEN, EOT_TOKEN)

    def encode(self, example, tokenizer, thought_id):
        return LatentFeatures(
            segment_example(example, tokenizer, self.format),
            step_ids(example, tokenizer, self.format),
            tokenizer.convert_tokens_to_ids(BOT_TOKEN),
            tokenizer.convert_tokens_to_ids(EOT_TOKEN),
        )

    def collate(self, features, pad_token_id):
        return {"features": list(features), "pad_token_id": pad_token_id}

    def inference_thoughts(self) -> int:
        raise NotImplementedError

    def prompt_spec(self) -> PromptSpec:
        return PromptSpec(method=self.name, num_thought_tokens=self.inference_thoughts(), thought_token=None,
                          separator=self.config.separator, joiner=self.format.joiner, decode=self.decode,
                          latent_markers=(BOT_TOKEN, EOT_TOKEN), projection=self.projection)


@dataclass
class CoconutSettings(MethodSettings):
    # Stage k replaces the first k CoT steps with k * thoughts_per_step continuous thoughts; one stage every
    # epochs_per_stage epochs; the last stage (max_stages) drops every language step.
    coconut_thoughts_per_step: int = 2
    coconut_max_stages: int = 3
    coconut_epochs_per_stage: float = 3.0

    def validate(self, where: str) -> None:
        if not self.coconut_epochs_per_stage > 0:
            raise ConfigError(f"{where}: method.coconut_epochs_per_stage must be > 0, got "
                              f"{self.coconut_epochs_per_stage}")
        if self.coconut_thoughts_per_step < 1 or self.coconut_max_stages < 1:
            raise ConfigError(f"{where}: method.coconut_thoughts_per_step and method.coconut_max_stages must be >= 1")


class CoconutMethod(LatentMethod):

    title = "Coconut"
    description = (
        "It reasons in continuous thoughts: after `<bot>` it feeds its last hidden state back as the next "
        "input a fixed number of times, then reads `<eot>` and the separator and answers."
    )
    name = "coconut"
    settings_class = CoconutSettings
    curriculum = True

    def length(self, features):
        """An upper bound over all stages: every thought and every language step."""
        return len(latent_prefix(features)) + self.inference_thoughts() + len(latent_suffix(features, features.steps))

    def stage(self, epoch: float) -> int:
        return min(int(epoch // self.settings.coconut_epochs_per_stage), self.settings.coconut_max_stages)

    def schedule_key(self, epoch, step=None):
        return self.stage(epoch)

    def inference_thoughts(self) -> int:
        return self.settings.coconut_max_stages * self.settings.coconut_thoughts_per_step

    def batch(self, inputs, device, stage: int):
        final = stage >= self.settings.coconut_max_stages
        suffixes = [latent_suffix(f, () if final else f.steps[stage:]) for f in inputs["features"]]
        prefixes = [latent_prefix(f) for f in inputs["features"]]
        return latent_batch(prefixes, suffixes, inputs["pad_token_id"], device)

    def loss(self, model, batch, backward=None, *, use_cache: bool = True):
        stage = self.stage(self.epoch)
        tensors = self.batch(batch, next(model.parameters()).device, stage)
        thoughts = stage * self.settings.coconut_thoughts_per_step
        out = run_latent_pathway(model, tensors, thoughts, use_cache=use_cache)
        suffix = tensors["suffix"]
        per_token = token_cross_entropy(out.logits, suffix["input_ids"])  # (B, S-1)
        targets = suffix["roles"][:, 1:]
        loss = masked_mean(per_token, (targets == REASONING) | (targets == ANSWER))
        return loss, {"coconut_stage": float(stage)}
