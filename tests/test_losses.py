"""Loss terms against hand computations on fixed tensors."""

from __future__ import annotations

import math

import pytest
import torch

from dartlm.data.layout import ANSWER, PAD_ROLE, PROMPT, REASONING
from dartlm.losses import (answer_loss, cot_pathway_loss, distill_loss, distill_positions, gather_masked,
                           teacher_spread)


def test_distill_loss_matches_hand_computation():
    # L = 2 layers, B = 2 rows, n = 2 features.
    teacher = torch.tensor([[[1.0, 3.0], [5.0, 7.0]], [[0.0, 0.0], [0.0, 4.0]]])
    student = torch.tensor([[[2.0, 3.0], [5.0, 5.0]], [[1.0, 1.0], [1.0, 1.0]]])
    # Layer 1: mean |diff| = (1 + 0 + 0 + 2) / 4 = 0.75; std of {1,3,5,7} (unbiased) = sqrt(20/3).
    # Layer 2: mean |diff| = (1 + 1 + 1 + 3) / 4 = 1.5;  std of {0,0,0,4} = sqrt(12/3) = 2.
    expected = (0.75 / math.sqrt(20 / 3) + 1.5 / 2.0) / 2
    assert distill_loss(teacher, student).item() == pytest.approx(expected, rel=1e-6)


def test_detached_teacher_gets_no_gradient_from_distillation():
    teacher = torch.randn(3, 4, 5, requires_grad=True)
    student = torch.randn(3, 4, 5, requires_grad=True)
    distill_loss(teacher, student, detach_teacher=True).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0

    teacher.grad = student.grad = None
    distill_loss(teacher, student, detach_teacher=False).backward()
    assert teacher.grad is not None and teacher.grad.abs().sum() > 0


def test_teacher_spread_matches_hand_computation_and_is_zero_when_positions_agree():
    # L = 1 layer, M = 2 positions, n = 2 features: rows (0, 2) and (2, 6).
    teacher = torch.tensor([[[0.0, 2.0], [2.0, 6.0]]])
    # Across positions (unbiased): feature 1 std of {0, 2} = sqrt(2), feature 2 std of {2, 6} = sqrt(8); mean
    # (sqrt(2) + sqrt(8)) / 2 = 1.5 sqrt(2). Overall {0, 2, 2, 6}: mean 2.5, squared deviations sum to 19, var 19/3.
    expected = 1.5 * math.sqrt(2) / math.sqrt(19 / 3)
    assert teacher_spread(teacher) == pytest.approx(expected, rel=1e-6)
    same = torch.tensor([[[1.0, 5.0], [1.0, 5.0], [1.0, 5.0]]])
    assert teacher_spread(same) == 0.0
    assert teacher_spread(torch.randn(3, 1, 4)) is None  # one position: no spread to measure


def test_distill_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        distill_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5))


def test_gather_masked_skips_the_embedding_output():
    hidden = tuple(torch.arange(2 * 4 * 3, dtype=torch.float).reshape(2, 4, 3) + 100 * i for i in range(3))
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0, 1] = mask[1, 3] = True
    picked = gather_masked(hidden, mask)
    assert picked.shape == (2, 2, 3)  # layers 1..2, selected positions, n
    assert torch.equal(picked[0, 0], hidden[1][0, 1])
    assert torch.equal(picked[1, 1], hidden[2][1, 3])


def test_distill_positions_select_z_n_y_1_or_z_n_with_the_answer():
    # Row 0: Q Q Z SEP | Y Y eos; row 1: Q SEP | Y eos, right-padded.
    roles = torch.tensor([[PROMPT, PROMPT, REASONING, REASONING, ANSWER, ANSWER, ANSWER],
                          [PROMPT, REASONING, ANSWER, ANSWER, PAD_ROLE, PAD_ROLE, PAD_ROLE]])
    anchor = torch.tensor([3, 1])

    def selected(where):
        return [row.nonzero().flatten().tolist() for row in distill_positions(roles, anchor, where)]

    assert selected("z_n") == [[3], [1]]
    assert selected("y_1") == [[4], [2]]
    assert selected("z_n_and_answer") == [[3, 4, 5, 6], [1, 2, 3]]
    with pytest.raises(ValueError, match="unknown"):
        distill_positions(roles, anchor, "z_1")


def _ce(logits_row: torch.Tensor, target: int) -> float:
    return -torch.log_softmax(logits_row, dim=-1)[target].item()


def test_cot_loss_is_the_sum_of_two_means_and_answer_loss_ignores_the_rest():
    torch.manual_seed(0)
    vocab = 7
    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 0, 0]])
    roles = torch.tensor(
        [[PROMPT, PROMPT, REASONING, REASONING, ANSWER, ANSWER], [PROMPT, REASONING, ANSWER, ANSWER, PAD_ROLE, PAD_ROLE]]
    )
    logits = torch.randn(2, 6, vocab)
    # Token t is predicted from position t-1.
    reasoning = [(0, 2), (0, 3), (1, 1)]
    answer = [(0, 4), (0, 5), (1, 2), (1, 3)]
    mean = lambda cells: sum(_ce(logits[b, t - 1], ids[b, t].item()) for b, t in cells) / len(cells)
    assert cot_pathway_loss(logits, ids, roles).item() == pytest.approx(mean(reasoning) + mean(answer), rel=1e-5)
    assert answer_loss(logits, ids, roles).item() == pytest.approx(mean(answer), rel=1e-5)
