"""The prompts of a job's runs as one tensor, and each run's Adam(W) step and gradient clipping.

A job of K runs (a pack, or one run alone) keeps its prompts as the rows of one tensor [K, L, d]
and their Adam moments as two more such tensors. Each row follows its own run: its learning
rate (the run's schedule at the run's step), weight decay, optimizer, Adam step count and
clipping by its own gradient norm, in the arithmetic of torch's Adam(W) and
`clip_grad_norm_`. A row is updated by the same operations on tensors of the same shape
whatever the other rows are, so a run's prompt and moments are bit for bit those of the same
run trained alone: a vectorised update over all rows would not be (an element's rounding can
depend on where it falls in a vector register or a thread's chunk of a larger tensor).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BETAS = (0.9, 0.999)  # torch's Adam defaults
EPS = 1e-8
CLIP_EPS = 1e-6  # what clip_grad_norm_ adds to the norm


@dataclass(frozen=True)
class RowStep:
    """How one row (run) steps now."""

    row: int
    grad: torch.Tensor  # the run's gradient [L, d], averaged over processes
    lr: float
    weight_decay: float
    grad_clip: float  # 0: not clipped
    decoupled: bool = True  # AdamW; False: Adam, the decay added to the gradient


class StackedAdam:
    """K prompts [K, L, d] (``weight``) with their Adam moments and step counts."""

    def __init__(self, prompts: torch.Tensor):
        self.weight = prompts.detach().float().clone()
        self.exp_avg = torch.zeros_like(self.weight)
        self.exp_avg_sq = torch.zeros_like(self.weight)
        self.steps = [0] * len(prompts)

    def restore(self, row: int, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                step: int) -> None:
        """Row ``row`` continues from saved moments (a resumed run)."""
        self.exp_avg[row] = exp_avg
        self.exp_avg_sq[row] = exp_avg_sq
        self.steps[row] = step

    def state_of(self, row: int) -> dict[str, torch.Tensor]:
        """The row's moments (none before its first step, as torch's Adam has none then)."""
        if not self.steps[row]:
            return {}
        return {"exp_avg": self.exp_avg[row], "exp_avg_sq": self.exp_avg_sq[row]}

    @torch.no_grad()
    def step(self, rows: list[RowStep]) -> None:
        """Clip and apply each row's gradient; the other rows are left as they are."""
        beta1, beta2 = BETAS
        for r in rows:
            grad = r.grad
            if r.grad_clip > 0:
                norm = torch.linalg.vector_norm(grad)
                grad = grad * (r.grad_clip / (norm + CLIP_EPS)).clamp(max=1.0)
            param = self.weight[r.row]
            if r.decoupled:
                param.mul_(1 - r.lr * r.weight_decay)
            elif r.weight_decay:
                grad = grad.add(param, alpha=r.weight_decay)
            self.steps[r.row] += 1
            step = self.steps[r.row]
            exp_avg, exp_avg_sq = self.exp_avg[r.row], self.exp_avg_sq[r.row]
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / (1 - beta2 ** step) ** 0.5).add_(EPS)
            param.addcdiv_(exp_avg, denom, value=-r.lr / (1 - beta1 ** step))
