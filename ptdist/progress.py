"""The progress of a loop (training steps, prompts captured, sentences encoded): a bar on a
terminal, counted lines anywhere else.

A bar (tqdm) redraws one line with carriage returns. That suits a terminal, and nothing else:
a Ray worker's output reaches the driver and `ray job logs` line by line, so a bar there is
either one fragment per redraw or nothing until it closes, and in a file it is the same. So
when stderr is not a terminal the loop logs a counted line (``12/30 steps, loss 0.84, 4.1
steps/s, eta 4s``) every ``every`` items (by default a tenth of the loop) or every `SECONDS`,
whichever comes first, and at the end: a long run says where it is at least every half minute,
and a fast one in about ten lines. Only global rank 0 shows progress (`ptdist.logs`).
"""

from __future__ import annotations

import logging
import math
import sys
import time

from ptdist import logs

SECONDS = 30.0  # the longest wait between two counted lines
LINES = 10  # about as many counted lines per loop, when it is faster than SECONDS per line


class Progress:
    """Progress over ``total`` items counted in ``unit`` (singular), from ``start``. Use as a
    context manager (the bar is closed at the end) and call `update` with the items done."""

    def __init__(self, what: str, total: int, unit: str, logger: logging.Logger,
                 start: int = 0, every: int | None = None):
        self.what, self.total, self.unit, self.logger = what, total, unit, logger
        self.start = self.last = start
        self.every = every or max(1, math.ceil((total - start) / LINES))
        self.t0 = self.said = time.monotonic()
        self.bar = None
        if logger.isEnabledFor(logging.INFO) and logs.global_rank()[0] == 0 \
                and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=what, unit=unit,
                            file=sys.stderr, dynamic_ncols=True)
            logs.BARS.add(self.bar)

    def update(self, done: int, **fields: str) -> None:
        """``done`` items of ``total`` are done; ``fields`` (name: formatted value) describe
        the latest of them."""
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            if fields:
                self.bar.set_postfix(fields, refresh=False)
            return
        now = time.monotonic()
        if done >= self.total or done - self.last >= self.every or now - self.said >= SECONDS:
            self.logger.info(self._line(done, now, fields))
            self.last, self.said = done, now

    def _line(self, done: int, now: float, fields: dict[str, str]) -> str:
        rate = (done - self.start) / max(now - self.t0, 1e-9)
        eta = f"{(self.total - done) / rate:.0f}s" if rate else "unknown"
        return (f"{self.what}: {done}/{self.total} {self.unit}s"
                + "".join(f", {name} {value}" for name, value in fields.items())
                + f", {rate:.1f} {self.unit}s/s, eta {eta}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            logs.BARS.discard(self.bar)
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
