"""A run's progress on stderr, from rank 0 only (readable in `ray job logs`)."""

from __future__ import annotations

import math
import sys
import time


class Progress:
    """One line every few steps (step, loss, learning rate, rate, ETA), and free lines."""

    def __init__(self, steps: int, eval_every: int, start_step: int, enabled: bool):
        self.steps, self.enabled = steps, enabled
        self.every = max(1, min(eval_every, steps // 20 or 1))
        self.t0, self.step0, self.losses = time.time(), start_step, []

    def step(self, step: int, loss: float, lr: float) -> None:
        self.losses.append(loss)
        if not self.enabled or (step % self.every and step != self.steps):
            return
        rate = (step - self.step0) / max(time.time() - self.t0, 1e-9)
        eta = (self.steps - step) / rate if rate else math.inf
        print(f"step {step}/{self.steps} loss {sum(self.losses) / len(self.losses):.4f} "
              f"lr {lr:.2e} {rate:.1f} step/s eta {eta:.0f}s", file=sys.stderr, flush=True)
        self.losses = []

    def line(self, text: str) -> None:
        if self.enabled:
            print(text, file=sys.stderr, flush=True)
