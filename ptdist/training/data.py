"""Stateless data order: the global batch of step s is a pure function of (seed, s).

Nothing to save for resume, and the same global batches whatever the number of processes:
each rank takes its contiguous slice of the global batch.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


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


def rank_slice(indices: list[int], rank: int, world: int) -> list[int]:
    per = len(indices) // world
    return indices[rank * per: (rank + 1) * per]


def eval_shard(n: int, rank: int, world: int) -> tuple[list[int], int]:
    """This rank's evaluation indices, padded so every rank runs the same number of forwards
    (ZeRO-3 gathers parameters collectively: a rank with one batch fewer would hang the rest).
    Returns the indices and how many of them are real."""
    mine = list(range(rank, n, world))
    per_rank = -(-n // world)
    real = len(mine)
    mine += [mine[-1] if mine else 0] * (per_rank - real)
    return mine, real
