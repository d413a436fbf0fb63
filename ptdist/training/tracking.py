"""What a run does with each evaluation: add it to the history, keep the parameters of the best
one, decide early stopping, and checkpoint. One place for every training loop (a single run's,
and each run of a packed job), so their runs stop and resume by the same rules.

A run whose loss or parameters stop being finite has diverged: it stops with `Diverged`, a user
error (the same run diverges again on every attempt), before anything of it is checkpointed or
stored."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ptdist.errors import PtdistError
from ptdist.training.checkpoint import TrainState, save_checkpoint

BEST = "best."  # checkpoint key prefix of the parameters at the best evaluation


class Diverged(PtdistError):
    """A run whose loss or trained parameters became NaN or infinite."""


def flattened(step: int, evals_since_best: int, patience: int | None, min_steps: int) -> bool:
    """Whether a run stops at its evaluation at ``step``: ``patience`` evaluations in a row
    without a new best, from ``min_steps`` on (a curve that rises slowly at first is not judged
    by its start)."""
    return patience is not None and step >= min_steps and evals_since_best >= patience


def stop_step(curve: list[tuple[int, float]], patience: int, min_steps: int) -> int:
    """The step at which a run with this learning curve ((step, score) per evaluation, higher
    is better) would have stopped under ``patience`` and ``min_steps``: the rule a training
    loop applies, replayed on a finished run's history. Its last step when it never stops."""
    best, since = None, 0
    for step, score in curve:
        if best is None or score > best:
            best, since = score, 0
        else:
            since += 1
        if flattened(step, since, patience, min_steps):
            return step
    return curve[-1][0]


@dataclass
class RunTracker:
    state: TrainState
    best: dict[str, torch.Tensor] | None  # the parameters at the best evaluation so far
    folder: Path  # where the run's checkpoint lives
    metric: str  # the primary metric; higher is better
    patience: int | None  # evaluations without improvement before stopping early
    label: str  # the run, as its error names it
    min_steps: int = 0  # no early stop before this step
    stopped: bool = False

    @classmethod
    def resumed(cls, saved: dict[str, torch.Tensor], state: TrainState, folder: Path,
                metric: str, patience: int | None, label: str,
                min_steps: int = 0) -> "RunTracker":
        """A tracker continuing from checkpoint tensors ``saved`` (empty for a fresh run)."""
        best = {k[len(BEST):]: v for k, v in saved.items() if k.startswith(BEST)} or None
        tracker = cls(state, best, folder, metric, patience, label, min_steps)
        tracker.stopped = tracker.flattened()  # checkpointed at the evaluation that stopped it
        return tracker

    def flattened(self) -> bool:
        return flattened(self.state.step, self.state.evals_since_best, self.patience,
                         self.min_steps)

    def diverged(self, what: str) -> Diverged:
        return Diverged(f"{self.label} diverged at step {self.state.step}: {what} is not finite "
                        "(NaN or infinity), so nothing of it was stored. Lower the learning rate "
                        "or check the init, then run again")

    @property
    def at_start(self) -> bool:
        """Nothing trained or evaluated yet: the starting prompt is evaluated first (step 0),
        so a learning curve starts where its prompt did and keep-best may keep it."""
        return self.state.step == 0 and not self.state.history

    def record(self, loss: float | None, metrics: dict[str, float], elapsed: float,
               tensors: dict[str, torch.Tensor], names: list[str], save: bool) -> str:
        """Record the evaluation at ``state.step`` (``loss``: of the last step; None before
        the first); ``tensors`` are the run's parameters (keys ``names``) and optimizer state,
        checkpointed when ``save`` (rank 0). Returns the progress line."""
        if not all(bool(torch.isfinite(tensors[name]).all()) for name in names):
            raise self.diverged("its trained parameters")
        state = self.state
        state.history.append({"step": state.step, "loss": loss, "time_s": elapsed, **metrics})
        score = metrics[self.metric]
        if state.best_score is None or score > state.best_score:
            state.best_score, state.best_step, state.evals_since_best = score, state.step, 0
            self.best = {name: tensors[name].clone() for name in names}
        else:
            state.evals_since_best += 1
        self.stopped = self.flattened()
        if save:
            save_checkpoint(self.folder, dict(tensors, **{BEST + k: v
                                                          for k, v in self.best.items()}), state)
        return (f"eval @ {state.step}: " + " ".join(f"{k}={v:.2f}" for k, v in metrics.items())
                + f" (best {self.metric}={state.best_score:.2f} @ {state.best_step})"
                + (" - early stop" if self.stopped else ""))
