"""Stateless data order: the global batch of step s is a pure function of (seed, s) (and,
bucketed, of the rows' lengths).

Nothing to save for resume, and the same global batches whatever the number of processes:
each rank takes its contiguous slice of the global batch.

The rows come in a stream of seeded epochs: each epoch a permutation of the rows, so every row
appears once per epoch. Unbucketed, step s takes the stream's rows [s b, (s + 1) b). Bucketed
(`BatchOrder` with a window of W batches), the W batches of a window take the same W b rows of
the stream between them, sorted by length and cut into batches, in a seeded order: every row
still appears exactly as often as unbucketed, over any whole window, and a batch holds rows of
about one length, so little of its forward is padding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np

BUCKET_STREAM = 0x62756B  # keeps the order of a window's batches apart from epoch_order's draws


@lru_cache(maxsize=64)  # a pack of up to 64 runs; a large dataset's order is a few MB
def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The data order of an epoch. Every step of the epoch slices it (each run of a pack, each
    step): drawn once, not once per step, and read-only since it is shared."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    order.flags.writeable = False
    return order


def global_batch(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    """Dataset indices of the global batch for ``step`` (0-based), walking seeded epochs."""
    start = step * batch_size
    out: list[int] = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        order = epoch_order(n, seed, epoch)
        out.extend(order[offset: offset + batch_size - len(out)].tolist())
    return out


Lengths = Callable[[Sequence[int]], Sequence[int]]  # row indices -> their lengths in tokens


class BatchOrder:
    """The global batch of each step of a run: `global_batch`, or with ``window`` W > 0 the
    bucketed batches of each window of W steps (``lengths`` gives rows' lengths). Keeps the
    window it last built: a run asks for its steps in order."""

    def __init__(self, n: int, batch_size: int, seed: int, window: int = 0,
                 lengths: Lengths | None = None):
        if window and lengths is None:
            raise ValueError("a bucketed order needs the rows' lengths")
        self.n, self.batch_size, self.seed, self.window = n, batch_size, seed, window
        self.lengths = lengths
        self._built: tuple[int, list[list[int]]] | None = None

    def __call__(self, step: int) -> list[int]:
        if not self.window:
            return global_batch(step, self.n, self.batch_size, self.seed)
        index, position = divmod(step, self.window)
        if self._built is None or self._built[0] != index:
            self._built = index, self._bucketed(index)
        return self._built[1][position]

    def _bucketed(self, index: int) -> list[list[int]]:
        """The batches of window ``index``: the stream's rows of its steps, shortest first
        (ties in stream order), cut into batches, in a seeded order."""
        b = self.batch_size
        rows = global_batch(index, self.n, b * self.window, self.seed)
        sizes = self.lengths(rows)
        rows = [rows[i] for i in sorted(range(len(rows)), key=sizes.__getitem__)]
        batches = [rows[k * b:(k + 1) * b] for k in range(self.window)]
        order = np.random.default_rng([self.seed, index, BUCKET_STREAM]).permutation(self.window)
        return [batches[k] for k in order]
