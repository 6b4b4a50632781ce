"""Quiet-STaR (Zelikman et al. 2024), Fast Quiet-STaR and Fast Quiet-STaR NTP (Huang et al. 2025).

All three train on the No-CoT text of the training file, `[bos] Q SEP Y eos`: at inference they answer right after
the separator, as every single-pass method here does, so the thoughts learn on the text they are used on (thoughts
before every CoT token would multiply CoT's cost by the thought length). `quiet_loss_on` says which next tokens
count: every token of the text (`all`, Quiet-STaR's LM loss over free text, the default) or the answer only
(`answer`, the positions No-CoT trains on; ours).

Quiet-STaR. Each sequence is repeated `quiet_passes` times; every position whose next token counts samples a
thought (thinking/quiet.py, all of them in parallel; the others' thoughts would enter no loss), and the mixing head predicts the next `quiet_n_talk` true tokens from the base and
post-thought states. Loss = NLL + policy_weight * REINFORCE:
  NLL    = 0.5 * NLL(base prediction of the next token) + 0.5 * mean over talk tokens of NLL(mixed prediction)
  reward = sum over the talk tokens of (NLL_base - NLL_mixed), detached, minus its mean over the passes of the same
           position, negative values clamped to 0; positions without n_talk counted true tokens after them are
           left out (the spec's choice for the end of a sequence)
  policy = -mean(reward * sum of log pi(thought tokens)), log pi at temperature `quiet_reinforce_temperature`.
Inference thinks before each answer token (quiet.quiet_decode).

Fast Quiet-STaR: the same objective through stages of shorter thoughts (`fqs_stages`: [n_ahead, n_talk] per stage,
equal shares of the steps); each stage starts from the previous stage's weights with a fresh optimizer, as the
source starts each stage as a new run. Ours: the learning-rate schedule runs on over the stages instead of
restarting with each (the source also lowers lr from 2e-6 to 1e-6 after the first stage).

Fast Quiet-STaR NTP: a fresh copy of the base (with fresh LoRA) learns, without any thought tokens, from a frozen
thinking teacher (`ntp_teacher`: an exported quiet-star or fast-quiet-star folder, run with its own thought length
and one talk token, greedy thoughts). At each counted position a token a_t is sampled from the student's logits;
reward_t = max(0, CE_teacher(t) - CE_student(t)) of the true next token, detached; loss = -mean(reward_t *
log_softmax(logits_t / 3)[a_t]) * ntp_policy_weight, as written in the source. Ours: `ntp_nll_weight` adds the
plain NLL of the true token (the source computes it but does not train on it). It exports as the plain model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from dartlm.config import ConfigError, MethodSettings
from dartlm.data.layout import ANSWER, PAD_ROLE, build_pathway, pad_pathways
from dartlm.losses import masked_mean
from dartlm.methods.base import Method, forward
from dartlm.model.export import PromptSpec
from dartlm.thinking import QuietThinking, thinking_for
from dartlm.thinking.decoding import positions_from_mask
from dartlm.thinking.quiet import (HEAD_ATTRIBUTE, QuietHead, choose_tokens, meta_init_embedding, mixed_logits,
                                  think_in_parallel, thought_head)


def next_token_targets(input_ids: torch.Tensor, roles: torch.Tensor, loss_on: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, counted), both (B, T): position t predicts token t+1; counted says whether that prediction is
    trained on (`all`: every real next token; `answer`: answer tokens and eos). The last column counts nothing."""
    targets = torch.cat([input_ids[:, 1:], input_ids.new_zeros(input_ids.shape[0], 1)], dim=1)
    next_roles = torch.cat([roles[:, 1:], roles.new_full((roles.shape[0], 1), PAD_ROLE)], dim=1)
    counted = next_roles == ANSWER if loss_on == "answer" else next_roles != PAD_ROLE
    return targets, counted


def thinking_positions(counted: torch.Tensor) -> torch.Tensor:
    """(P,) the positions whose next token counts in some row: the only ones whose thoughts a loss uses."""
    return counted.any(dim=0).nonzero()[:, 0]


def columns_at(x: torch.Tensor, index: torch.Tensor, fill=0) -> torch.Tensor:
    """x[:, index] for index (P,) that may run past the end (those columns are `fill`). x (B, T, ...)."""
    length = x.shape[1]
    inside = index < length
    picked = x[:, index.clamp(max=length - 1)]
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return torch.where(inside.view(shape), picked, torch.full_like(picked, fill))


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, T, V), (B, T) -> (B, T) in fp32."""
    return F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")


def policy_rewards(improvement: torch.Tensor, passes: int, clamp_negative: bool = True) -> torch.Tensor:
    """Quiet-STaR's reward: the improvement (B, T) minus its mean over the passes of the same sequence (rows
    b * passes .. b * passes + passes - 1 repeat one sequence), negative values clamped to 0. Detached."""
    reward = improvement.detach()
    if passes > 1:
        grouped = reward.reshape(-1, passes, reward.shape[1])
        reward = (grouped - grouped.mean(dim=1, keepdim=True)).reshape_as(reward)
    return reward.clamp_min(0) if clamp_negative else reward


def reinforce_loss(logprob: torch.Tensor, reward: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """-mean over the scored positions of reward * log pi; logprob (B, T) carries the gradient."""
    return -masked_mean(reward.detach() * logprob, scored)


class LeftPadded(Method):
    """Batches are left-padded, so that every row's answer ends in the last columns: with `quiet_loss_on: answer`
    the thinking positions of a batch are then a few columns, not the whole width."""

    def layout(self, segments, thought_id):
        return build_pathway(segments, [])

    def collate(self, features, pad_token_id):
        return pad_pathways(features, pad_token_id, left=True)


@dataclass
class QuietSettings(MethodSettings):
    # The defaults are Quiet-STaR's public training script's.
    quiet_n_ahead: int = 12  # thought length, start and end of thought included: n_ahead - 2 thought tokens
    quiet_n_talk: int = 4  # true tokens predicted from each thought (teacher-forced after it)
    quiet_passes: int = 2  # thoughts sampled per position (the sequence repeated); their mean reward is the baseline
    quiet_policy_weight: float = 1.0e6  # REINFORCE's weight against the NLL
    quiet_sample_temperature: float = 1.0
    quiet_reinforce_temperature: float = 3.0  # log pi of a thought token is taken from logits / this
    quiet_embedding_scale: float = 100.0  # start/end-of-thought embeddings are stored / this (a larger step size)
    quiet_clamp_negative_reward: bool = True
    quiet_loss_on: str = "all"  # all: every next token of the text (Quiet-STaR) | answer: the answer only (ours)

    def validate(self, where: str) -> None:
        if self.quiet_n_ahead < 2 or self.quiet_n_talk < 1 or self.quiet_passes < 1:
            raise ConfigError(f"{where}: method.quiet_n_ahead must be >= 2 (start and end of thought), "
                              "method.quiet_n_talk and method.quiet_passes >= 1")
        check_loss_on(self.quiet_loss_on, where)


@dataclass
class FastQuietSettings(QuietSettings):
    # [n_ahead, n_talk] per stage, each an equal share of the training steps (Fast Quiet-STaR, Huang et al. 2025).
    fqs_stages: list[list[int]] = field(default_factory=lambda: [[16, 8], [12, 4], [8, 4]])

    def validate(self, where: str) -> None:
        super().validate(where)
        if not self.fqs_stages or any(len(s) != 2 or s[0] < 2 or s[1] < 1 for s in self.fqs_stages):
            raise ConfigError(f"{where}: method.fqs_stages must be a non-empty list of [n_ahead >= 2, n_talk >= 1], "
                              f"got {self.fqs_stages!r}")


@dataclass
class NtpSettings(MethodSettings):
    ntp_teacher: str = ""  # the exported thinking teacher (a quiet-star or fast-quiet-star model folder)
    ntp_policy_weight: float = 1.0e6
    ntp_nll_weight: float = 0.0  # ours: a plain NLL term beside the policy loss
    quiet_reinforce_temperature: float = 3.0
    quiet_loss_on: str = "all"

    def validate(self, where: str) -> None:
        check_loss_on(self.quiet_loss_on, where)


def check_loss_on(value: str, where: str) -> None:
    if value not in ("all", "answer"):
        raise ConfigError(f"{where}: method.quiet_loss_on must be all or answer, got {value!r}")


class QuietStarMethod(LeftPadded):

    title = "Quiet-STaR"
    description = (
        "It thinks before every answer token: a short thought (start-of-thought embedding, a few greedy "
        "tokens, end-of-thought embedding), whose final state a small mixing head (`quiet_head.safetensors`) "
        "mixes with the thought-free one to predict the token; the thought is then dropped (Quiet-STaR, "
        "Zelikman et al. 2024). Trained with REINFORCE on how much each thought improved the prediction of "
        "the following true tokens."
    )
    name = "quiet-star"
    settings_class = QuietSettings
    decode = QuietThinking.name

    def extend_model(self, model, tokenizer=None):
        hidden = model.get_input_embeddings().weight.shape[1]
        init = meta_init_embedding(model, tokenizer) if tokenizer is not None else None
        head = QuietHead(hidden, init, self.settings.quiet_embedding_scale)
        model.add_module(HEAD_ATTRIBUTE, head.to(next(model.parameters()).device))  # trains, saved with adapters

    def card_lines(self, config):
        s = self.settings
        return [f"- {self.shape_text()}, {s.quiet_passes} passes, policy weight {s.quiet_policy_weight:g}, loss on "
                f"`{s.quiet_loss_on}`"]

    def shape_text(self) -> str:
        return (f"thoughts of {self.settings.quiet_n_ahead} (start and end included), {self.settings.quiet_n_talk} "
                "talk tokens")

    def thought_shape(self) -> tuple[int, int]:
        """(n_ahead, n_talk) now."""
        return self.settings.quiet_n_ahead, self.settings.quiet_n_talk

    def inference_n_ahead(self) -> int:
        return self.settings.quiet_n_ahead

    def loss(self, model, batch, backward=None):
        c = self.settings
        n_ahead, n_talk = self.thought_shape()
        passes = c.quiet_passes
        ids, mask, roles = (batch[k].repeat_interleave(passes, dim=0) for k in ("input_ids", "attention_mask", "roles"))
        head = thought_head(model)
        targets, counted = next_token_targets(ids, roles, c.quiet_loss_on)
        at = thinking_positions(counted)
        th = think_in_parallel(model, head, ids, mask, n_ahead=n_ahead, n_talk=n_talk, sample=True,
                               temperature=c.quiet_sample_temperature,
                               reinforce_temperature=c.quiet_reinforce_temperature, at=at)
        nll_base = cross_entropy(th.base_logits, targets)  # (B, T)
        # Talk step i after the thought of position t: the base state at t + i and the thought's state i predict
        # token t + 1 + i. Everything below is over the thinking positions: (B, P, ...).
        nll_mixed, base_ahead, counted_ahead, weights = [], [], [], []
        for i in range(n_talk):
            h_base = columns_at(th.base_hidden, at + i)
            w = head.mixing_weight(h_base, th.post_hidden[:, :, i])
            weights.append(w)
            logits = mixed_logits(model, head, h_base, th.post_hidden[:, :, i], w)
            nll_mixed.append(cross_entropy(logits, columns_at(targets, at + i)))
            base_ahead.append(columns_at(nll_base, at + i))
            counted_ahead.append(columns_at(counted, at + i, False))
        nll_mixed, base_ahead, counted_ahead = (torch.stack(x, -1) for x in (nll_mixed, base_ahead, counted_ahead))
        loss_nll = 0.5 * masked_mean(nll_base, counted) + 0.5 * masked_mean(nll_mixed, counted_ahead)
        improvement = ((base_ahead - nll_mixed) * counted_ahead).sum(-1)
        scored = counted_ahead.all(-1)
        reward = policy_rewards(improvement, passes, c.quiet_clamp_negative_reward)
        loss_policy = reinforce_loss(th.logprobs.sum(-1), reward, scored) if n_ahead > 2 else nll_base.new_zeros(())
        total = loss_nll + c.quiet_policy_weight * loss_policy
        w = torch.stack(weights, -2)[..., 0]  # (B, T, n_talk)
        return total, {
            "loss_nll": loss_nll.item(), "loss_policy": loss_policy.item(),
            "nll_base": masked_mean(nll_base, counted).item(), "nll_mixed": masked_mean(nll_mixed, counted_ahead).item(),
            "improvement": masked_mean(improvement, scored).item(), "mix_weight": masked_mean(w, counted_ahead).item(),
            "n_ahead": float(n_ahead),
        }

    def prompt_spec(self) -> PromptSpec:
        n_ahead = self.inference_n_ahead()
        return PromptSpec(method=self.name, num_thought_tokens=n_ahead - 2, thought_token=None,
                          separator=self.config.separator, joiner=self.format.joiner, decode=self.decode,
                          quiet_n_ahead=n_ahead)


class FastQuietStarMethod(QuietStarMethod):

    title = "Fast Quiet-STaR"
    description = (
        "Quiet-STaR trained through stages of shorter thoughts (Fast Quiet-STaR, Huang et al. 2025): it "
        "thinks before every answer token with the last stage's thought length, mixed in by "
        "`quiet_head.safetensors`."
    )
    name = "fast-quiet-star"
    settings_class = FastQuietSettings
    curriculum = True

    def shape_text(self) -> str:
        return f"stages (n_ahead, n_talk) {', '.join(map(str, map(tuple, self.settings.fqs_stages)))}"

    def stage_at(self, step: int) -> int:
        stages = len(self.settings.fqs_stages)
        if not self.total_steps:
            return stages - 1  # outside training: the last stage
        return min(int(step * stages // self.total_steps), stages - 1)

    def schedule_key(self, epoch, step=None):
        return self.stage_at(self.step if step is None else step)

    def thought_shape(self):
        n_ahead, n_talk = self.settings.fqs_stages[self.stage_at(self.step)]
        return n_ahead, n_talk

    def inference_n_ahead(self):
        return self.settings.fqs_stages[-1][0]


class FqsNtpMethod(LeftPadded):

    title = "Fast Quiet-STaR NTP"
    description = (
        "A plain next-token predictor trained by reinforcement learning towards a model that thinks before "
        "every token (Fast Quiet-STaR NTP, Huang et al. 2025): it answers right after the question and the "
        "separator, with no thought tokens."
    )
    name = "fqs-ntp"
    settings_class = NtpSettings

    def __init__(self, config):
        super().__init__(config)
        if not self.settings.ntp_teacher:
            raise ConfigError("method.ntp_teacher: fqs-ntp learns from an exported quiet-star or fast-quiet-star "
                              "model; give its folder")
        self._teacher = None

    def card_lines(self, config):
        s = self.settings
        return [f"- teacher `{Path(s.ntp_teacher).name}`, policy weight {s.ntp_policy_weight:g}, NLL weight "
                f"{s.ntp_nll_weight:g}"]

    def teacher(self, device):
        """The frozen thinking teacher (loaded on first use): (model, its thought length)."""
        if self._teacher is None:
            from dartlm.thinking.exported import load_exported

            folder = Path(self.settings.ntp_teacher)
            model, _, spec = load_exported(folder, device=str(device))
            if not isinstance(thinking_for(spec), QuietThinking):
                raise ValueError(f"{folder}: method.ntp_teacher must be an exported quiet-star or fast-quiet-star "
                                 f"model, got one of method {spec.method!r}")
            model.requires_grad_(False)
            self._teacher = (model, spec.quiet_n_ahead)
        return self._teacher

    def loss(self, model, batch, backward=None):
        c = self.settings
        teacher, n_ahead = self.teacher(next(model.parameters()).device)
        # positions from the mask, as decoding counts them (the batch is left-padded)
        logits = forward(model, batch, position_ids=positions_from_mask(batch["attention_mask"])).logits
        if logits.shape[-1] != teacher.get_output_embeddings().weight.shape[0]:
            raise ValueError(f"{c.ntp_teacher}: the teacher's vocabulary ({teacher.get_output_embeddings().weight.shape[0]}) "
                             f"is not the student's ({logits.shape[-1]}): train both from the same base")
        targets, counted = next_token_targets(batch["input_ids"], batch["roles"], c.quiet_loss_on)
        at = thinking_positions(counted)
        with torch.no_grad():
            head = thought_head(teacher)
            th = think_in_parallel(teacher, head, batch["input_ids"], batch["attention_mask"], n_ahead=n_ahead,
                                   n_talk=1, sample=False, at=at)
            h_base = th.base_hidden[:, at]
            teacher_nll = cross_entropy(mixed_logits(teacher, head, h_base, th.post_hidden[:, :, 0]), targets[:, at])
        # over the thinking positions from here on: (B, P)
        logits, targets, counted = logits[:, at], targets[:, at], counted[:, at]
        student_nll = cross_entropy(logits, targets)
        sampled = choose_tokens(logits, sample=True)
        logprob = torch.log_softmax(logits.float() / c.quiet_reinforce_temperature, -1).gather(-1, sampled[..., None])[..., 0]
        reward = (teacher_nll - student_nll.detach()).clamp_min(0)
        loss_policy = reinforce_loss(logprob, reward, counted)
        loss_nll = masked_mean(student_nll, counted)
        total = c.ntp_policy_weight * loss_policy + c.ntp_nll_weight * loss_nll
        return total, {"loss_policy": loss_policy.item(), "loss_nll": loss_nll.item(),
                       "teacher_nll": masked_mean(teacher_nll, counted).item(),
                       "rewarded": masked_mean((reward > 0).float(), counted).item()}
