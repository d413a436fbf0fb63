"""The prompts of a packed job as one tensor, and their AdamW and gradient clipping in one pass.

A pack of K runs keeps its prompts as the rows of one parameter [K, L, d] and their Adam
moments as two more such tensors. An update of the runs that stepped is then a dozen tensor
operations for the whole pack rather than a dozen per run (each run's own optimizer, clipping
and scheduler cost more than a tiny model's forward of its examples). Each row still follows
its own run: its learning rate (the run's schedule at the run's step), weight decay, Adam step
count and clipping by its own gradient norm, in the arithmetic of torch's AdamW and
`clip_grad_norm_`, so a packed run's prompt and moments are those of the same run trained
alone, up to floating-point rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

BETAS = (0.9, 0.999)  # torch's AdamW defaults, which a separate run's optimizer uses
EPS = 1e-8
CLIP_EPS = 1e-6  # what clip_grad_norm_ adds to the norm


@dataclass(frozen=True)
class RowStep:
    """How one row (run) steps now."""

    row: int
    lr: float
    weight_decay: float
    grad_clip: float  # 0: not clipped


class StackedAdamW:
    """K prompts [K, L, d] (``weight``, trained) with their Adam moments and step counts."""

    def __init__(self, prompts: torch.Tensor):
        self.weight = nn.Parameter(prompts.detach().float().clone())
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
        """The row's moments (none before its first step, as torch's AdamW has none then)."""
        if not self.steps[row]:
            return {}
        return {"exp_avg": self.exp_avg[row], "exp_avg_sq": self.exp_avg_sq[row]}

    @torch.no_grad()
    def step(self, rows: list[RowStep]) -> None:
        """Clip and apply the gradient of each row in ``rows``; the other rows are left as they
        are. Clears the gradient."""
        beta1, beta2 = BETAS
        index = torch.tensor([r.row for r in rows])
        column = {"dtype": torch.float32, "device": self.weight.device}

        def per_row(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, **column).view(-1, 1, 1)

        grad = self.weight.grad.index_select(0, index)
        clip = [r.grad_clip for r in rows]
        if any(clip):
            norms = torch.linalg.vector_norm(grad.flatten(1), dim=1).view(-1, 1, 1)
            coef = (per_row(clip) / (norms + CLIP_EPS)).clamp(max=1.0)
            grad.mul_(torch.where(per_row(clip) > 0, coef, 1.0))
        for r in rows:
            self.steps[r.row] += 1
        steps = [self.steps[r.row] for r in rows]
        param = self.weight.index_select(0, index)
        param.mul_(per_row([1 - r.lr * r.weight_decay for r in rows]))
        exp_avg = self.exp_avg.index_select(0, index).lerp_(grad, 1 - beta1)
        exp_avg_sq = self.exp_avg_sq.index_select(0, index).mul_(beta2)
        exp_avg_sq.addcmul_(grad, grad, value=1 - beta2)
        denom = (exp_avg_sq.sqrt() / per_row([(1 - beta2 ** s) ** 0.5 for s in steps])).add_(EPS)
        param.add_(per_row([-r.lr / (1 - beta1 ** s) for r, s in zip(rows, steps)])
                   * exp_avg / denom)
        self.weight.index_copy_(0, index, param)
        self.exp_avg.index_copy_(0, index, exp_avg)
        self.exp_avg_sq.index_copy_(0, index, exp_avg_sq)
        self.weight.grad = None
