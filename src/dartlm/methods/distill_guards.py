"""Guards against distillation collapse (DART, CODI): where L_distill's gradient goes, and when lambda is on.

When the teacher (CoT pathway) and the student share weights, L_distill can be driven to zero by making the
distilled position carry nothing about the question in *both* pathways: detaching the teacher's activations does
not stop the student's gradient from moving the shared weights that also produce the teacher
(`benchmarks/README.md`, "Distillation collapse"). Two options, both off in the paper's configs:

- `method.distill_grad: student`: L_distill's gradient reaches only the weights that exist on the student side
  alone (REM for DART, the thought projection for CODI); the shared weights learn from the cross-entropy terms
  only. This is the asymmetry that Siamese self-supervision (SimSiam, BYOL) relies on. `all` is the paper.
- `method.distill_start` / `method.distill_ramp`: lambda is 0 for the first `distill_start` of training (the
  teacher learns the task first), then rises linearly to its value over the next `distill_ramp` (fractions of
  the training steps). 0 / 0 is the paper (lambda from the first step).
"""

from __future__ import annotations

from typing import Sequence

import torch


def distill_weight_at(weight: float, progress: float, start: float, ramp: float) -> float:
    """lambda at `progress` (0..1 of the training steps): 0 before start, then linear over ramp, then weight."""
    if progress < start:
        return 0.0
    if ramp <= 0:
        return weight
    return weight * min(1.0, (progress - start) / ramp)


def is_sharded(param: torch.Tensor) -> bool:
    """A weight FSDP2 keeps sharded across ranks (a DTensor)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed support
        return False
    return isinstance(param, DTensor)


def routed(loss: torch.Tensor, params: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    """A stand-in for `loss` with its value whose gradient reaches `params` alone, with exactly d loss / d params.

    The gradient is taken now (the graph is kept for the rest of the loss) and re-enters through a linear
    surrogate sum_p <p, g_p>, so one ordinary backward of the total, under DDP too, adds g_p to each p.grad and
    nothing to any other weight.
    """
    if not params:
        raise ValueError("method.distill_grad=student: the model has no student-only weights to route L_distill "
                         "into (DART needs rem.enabled: true)")
    if any(is_sharded(p) for p in params):
        raise ValueError("method.distill_grad=student is not supported with sharded weights (FSDP): its stand-in "
                         "gradient is taken with respect to the weights, which FSDP keeps sharded outside each "
                         "layer's forward and backward; use data parallelism (DDP) or distill_grad=all")
    if not loss.requires_grad:
        return loss
    grads = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
    surrogate = sum((p * g.to(p.dtype)).sum() for p, g in zip(params, grads) if g is not None)
    if not torch.is_tensor(surrogate):  # no parameter reached: nothing to add
        return loss.detach()
    return loss.detach() + (surrogate - surrogate.detach())
