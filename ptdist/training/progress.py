"""A run's steps as progress (`ptdist.progress`: a bar on a terminal, counted lines in a log),
with the loss averaged over its last steps (as many as a counted line is apart) and the
learning rate; its evaluations are lines of their own (`recipe.py`, `packed.py`)."""

from __future__ import annotations

import logging
from collections import deque

from ptdist.progress import Progress

log = logging.getLogger(__name__)


class RunProgress:
    """The steps ``start_step + 1 .. steps`` of ``what`` (a run, or a pack of runs)."""

    def __init__(self, what: str, steps: int, start_step: int = 0):
        self.steps = Progress(what, steps, "step", log, start=start_step)
        self.losses: deque[float] = deque(maxlen=self.steps.every)

    def step(self, step: int, loss: float, lr: float) -> None:
        self.losses.append(loss)
        self.steps.update(step, loss=f"{sum(self.losses) / len(self.losses):.4f}",
                          lr=f"{lr:.2e}")

    def __enter__(self) -> RunProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.steps.close()
