"""Loss terms shared by the methods: role-masked cross-entropy and DART's hidden-state distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dartlm.data.layout import ANSWER, REASONING


def token_cross_entropy(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """CE of each next token: position t predicts token t+1. logits (B, T, V), ids (B, T) -> (B, T-1) in fp32."""
    shifted = logits[:, :-1].float()  # (B, T-1, V)
    targets = input_ids[:, 1:]  # (B, T-1)
    return F.cross_entropy(shifted.transpose(1, 2), targets, reduction="none")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of values where mask is set; 0 (still differentiable) when nothing is selected."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def role_cross_entropy(logits: torch.Tensor, input_ids: torch.Tensor, roles: torch.Tensor, role: int) -> torch.Tensor:
    """Mean CE over the tokens of one role (e.g. ANSWER) across the batch. roles (B, T)."""
    per_token = token_cross_entropy(logits, input_ids)  # (B, T-1)
    return masked_mean(per_token, roles[:, 1:] == role)


def cot_pathway_loss(logits, input_ids, roles) -> torch.Tensor:
    """L_CoT: mean CE over Z (CoT + separator) plus mean CE over Y (two means, summed)."""
    per_token = token_cross_entropy(logits, input_ids)  # (B, T-1)
    target_roles = roles[:, 1:]
    return masked_mean(per_token, target_roles == REASONING) + masked_mean(per_token, target_roles == ANSWER)


def answer_loss(logits, input_ids, roles) -> torch.Tensor:
    """Mean CE over the answer tokens (and eos) only: L_ST, and the loss of No-CoT and PauseFT."""
    return role_cross_entropy(logits, input_ids, roles, ANSWER)


def distill_positions(roles: torch.Tensor, anchor: torch.Tensor, where: str) -> torch.Tensor:
    """(B, T) bool mask of the positions whose hidden states are matched.

    z_n: the last separator token (the paper). y_1: the first answer token. z_n_and_answer: z_N and every answer
    token, eos included ([z_N; Y]). Both pathways hold the same separator and answer tokens, so each row selects
    the same number of positions in both, in the same order.
    """
    columns = torch.arange(roles.shape[1], device=roles.device)[None, :]  # (1, T)
    if where == "z_n":
        return columns == anchor[:, None]
    if where == "y_1":
        return columns == anchor[:, None] + 1
    if where == "z_n_and_answer":
        return (columns == anchor[:, None]) | (roles == ANSWER)
    raise ValueError(f"unknown distillation position {where!r}")


def gather_masked(hidden_states: tuple[torch.Tensor, ...], mask: torch.Tensor) -> torch.Tensor:
    """Hidden states of layers 1..L at the masked positions, row-major: (L, M, n) with M = mask.sum()."""
    return torch.stack([h[mask] for h in hidden_states[1:]])


def distill_loss(teacher: torch.Tensor, student: torch.Tensor, *, detach_teacher: bool = True) -> torch.Tensor:
    """L_distill = (1/L) sum_l mean|h_cot[l] - h_st[l]| / std(h_cot[l]).

    teacher, student: (L, M, n) for M matched positions (M = B at z_N). std is one scalar per layer over the
    whole (M, n) teacher tensor (unbiased, as torch.std), as CODI normalises. Computed in fp32.
    """
    if teacher.shape != student.shape:
        raise ValueError(f"teacher {tuple(teacher.shape)} and student {tuple(student.shape)} differ in shape")
    teacher = teacher.float()
    student = student.float()
    if detach_teacher:
        teacher = teacher.detach()
    layers = teacher.shape[0]
    scale = teacher.reshape(layers, -1).std(dim=1)  # (L,)
    distance = (teacher - student).abs().reshape(layers, -1).mean(dim=1)  # (L,)
    return (distance / scale).mean()


def teacher_spread(teacher: torch.Tensor) -> float | None:
    """How much the teacher's hidden states differ between the matched positions, for spotting collapse.

    teacher: (L, M, n). Per layer, the std across the M positions (per feature, averaged over features) over the
    std of the whole (M, n) tensor; the mean over layers. About 1 when positions are as different as features are,
    0 when every example has the same hidden state there: the state in which L_distill can be tiny while the
    position carries nothing about the question. None when fewer than two positions are matched.
    """
    layers, positions = teacher.shape[0], teacher.shape[1]
    if positions < 2:
        return None
    teacher = teacher.detach().float()
    across_positions = teacher.std(dim=1).mean(dim=-1)  # (L,)
    overall = teacher.reshape(layers, -1).std(dim=1)  # (L,)
    return (across_positions / overall.clamp_min(torch.finfo(torch.float32).tiny)).mean().item()
