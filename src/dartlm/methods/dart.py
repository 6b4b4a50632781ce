"""DART's objective: L = L_CoT + L_ST + lambda * L_distill (paper eq. 5, spec sections 1 and 4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from dartlm.data.layout import DartCollator, DartFeatures, build_pathway
from dartlm.losses import answer_loss, cot_pathway_loss, distill_loss, distill_positions, gather_masked, teacher_spread
from dartlm.methods.base import Method, thoughts
from dartlm.methods.distill_guards import distill_weight_at, routed
from dartlm.model.adapters import ST_TOKEN
from dartlm.model.rem import rem_disabled, rem_parameters


@dataclass(frozen=True)
class DartLossSettings:
    distill_weight: float = 20.0  # lambda
    detach_teacher: bool = True  # CODI detaches its teacher; the paper does not say
    distill_at: str = "z_n"  # z_n | y_1 | z_n_and_answer (losses.distill_positions)
    distill_grad: str = "all"  # all | student (methods.distill_guards)
    distill_start: float = 0.0  # lambda's schedule, in fractions of training (methods.distill_guards)
    distill_ramp: float = 0.0

    @classmethod
    def from_config(cls, config) -> "DartLossSettings":
        return cls(config.distill_weight, config.detach_teacher, config.distill_at, config.distill_grad,
                   config.distill_start, config.distill_ramp)

    def weight_at(self, progress: float) -> float:
        return distill_weight_at(self.distill_weight, progress, self.distill_start, self.distill_ramp)

    def logged_weight(self, progress: float) -> float | None:
        """lambda now, for the log; None (not logged) when it is a constant."""
        return self.weight_at(progress) if self.distill_start > 0 or self.distill_ramp > 0 else None

    def distill_term(self, loss_distill: torch.Tensor, progress: float,
                     student_params: Callable[[], list[nn.Parameter]]) -> torch.Tensor:
        """lambda(progress) * L_distill, its gradient routed into the student-only weights (asked for only then)."""
        weight = self.weight_at(progress)
        term = weight * loss_distill
        if self.distill_grad == "student" and weight:
            term = routed(term, student_params())
        return term


@dataclass
class DartLoss:
    """The total and its three terms (the terms detached, for logging); CODI reports the same terms."""

    total: torch.Tensor
    cot: torch.Tensor
    st: torch.Tensor
    distill: torch.Tensor
    spread: float | None = None  # losses.teacher_spread at the distilled positions
    weight: float | None = None  # lambda at this step, logged when it follows a schedule

    def logs(self) -> dict[str, float]:
        logs = {"loss_cot": self.cot.item(), "loss_st": self.st.item(), "loss_distill": self.distill.item()}
        if self.spread is not None:
            logs["teacher_spread"] = self.spread
        if self.weight is not None:
            logs["distill_weight"] = self.weight
        return logs


def run_pathway(model: nn.Module, batch: dict[str, torch.Tensor]):
    """Forward one pathway with every layer's hidden states."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)


def dart_loss(model: nn.Module, batch: dict[str, dict[str, torch.Tensor]], settings: DartLossSettings,
              backward: Callable[[torch.Tensor], None] | None = None, *, progress: float = 1.0) -> DartLoss:
    """Both pathways through the same model: the CoT pathway without REM (teacher), the ST pathway with it.

    batch: {"cot": pathway tensors, "st": pathway tensors} as made by DartCollator. progress: the fraction of
    training done, for lambda's schedule.
    backward: when given and the teacher is detached, L_CoT is back-propagated as soon as it is known, so the
    teacher's graph is freed before the student runs and peak memory holds one pathway's activations, not two.
    The gradients are the same; `total` then carries L_CoT only as a value (for logging), not in its graph.
    """
    cot, st = batch["cot"], batch["st"]
    with rem_disabled(model):
        teacher = run_pathway(model, cot)
    loss_cot = cot_pathway_loss(teacher.logits, cot["input_ids"], cot["roles"])
    h_teacher = gather_masked(teacher.hidden_states, distill_positions(cot["roles"], cot["anchor"], settings.distill_at))
    del teacher
    early = backward is not None and settings.detach_teacher
    if early:
        h_teacher = h_teacher.detach()
        backward(loss_cot)

    student = run_pathway(model, st)
    loss_st = answer_loss(student.logits, st["input_ids"], st["roles"])
    h_student = gather_masked(student.hidden_states, distill_positions(st["roles"], st["anchor"], settings.distill_at))
    del student

    loss_distill = distill_loss(h_teacher, h_student, detach_teacher=settings.detach_teacher)
    student_loss = loss_st + settings.distill_term(loss_distill, progress, lambda: rem_parameters(model))
    total = student_loss + (loss_cot.detach() if early else loss_cot)
    return DartLoss(total, loss_cot.detach(), loss_st.detach(), loss_distill.detach(), teacher_spread(h_teacher),
                    settings.logged_weight(progress))


def distillation_line(m) -> str:
    """The model card's line on L_distill (DART, CODI)."""
    return (f"- distillation weight λ = {m.distill_weight:g} at `{m.distill_at}`, gradient into `{m.distill_grad}`, "
            f"start {m.distill_start:g}, ramp {m.distill_ramp:g}")


class DartMethod(Method):
    """Both pathways, REM on the ST pathway, hidden-state distillation at z_N."""

    title = "DART"
    description = (
        "It answers after a fixed number of silent-thought tokens (`<st>`), in one pass, with no chain of "
        "thought. It was trained with a chain-of-thought pathway and a silent-thought pathway together, the "
        "silent-thought pathway's hidden state before the answer distilled towards the chain-of-thought "
        "pathway's (DART, arXiv 2506.11752). Its adapters (the Reasoning Evolvement Module on the key and "
        "value inputs, and LoRA when used) are merged into the weights: this is the plain base architecture."
    )

    name = "dart"
    thought_token = ST_TOKEN
    uses_rem = True

    def __init__(self, config):
        super().__init__(config)
        self.loss_settings = DartLossSettings.from_config(config)

    def card_lines(self, config):
        lines = [distillation_line(config.method)]
        if config.rem.enabled:
            lines.append(f"- REM d = {config.rem.rank}, α = {config.rem.alpha:g}, placement `{config.rem.placement}`")
        return lines

    def layout(self, segments, thought_id):
        return DartFeatures(
            cot=build_pathway(segments, None),
            st=build_pathway(segments, thoughts(thought_id, self.num_thoughts)),
        )

    def length(self, features):
        return max(len(features.cot), len(features.st))

    def collate(self, features, pad_token_id):
        return DartCollator(pad_token_id)(features)

    def student_parameters(self, model):
        return rem_parameters(model)

    def loss(self, model, batch, backward=None):
        out = dart_loss(model, batch, self.loss_settings, backward, progress=self.progress)
        return out.total, out.logs()
