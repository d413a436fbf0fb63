"""What a run's training batches hold of its texts: its own cut (`text_cut`, from its task's
length distribution) and the rows' lengths its bucketed batch order groups by (`row_lengths`).
Both are properties of the run (its task's rows, its model's tokenizer, its settings), never of
the runs it is packed with."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ptdist.backbones import Backbone
from ptdist.training.data import Lengths

CUT_SAMPLE = 10_000  # training texts a cut is read from at most (a fixed sample beyond that)


def text_cut(backbone: Backbone, rows: Sequence[dict], quantile: float) -> int:
    """The most text tokens a run's training batches hold: the ``quantile`` of its training
    texts' lengths in ``backbone``'s tokens (the smallest length that at least that fraction
    of the texts do not exceed), capped by the backbone's max_length. Read from every text, or
    from `CUT_SAMPLE` of them drawn with seed 0 (the same for every seed of the task)."""
    if len(rows) > CUT_SAMPLE:
        picked = np.random.default_rng(0).choice(len(rows), CUT_SAMPLE, replace=False)
        rows = [rows[i] for i in sorted(picked)]
    sizes = backbone.text_lengths([r["text"] for r in rows])
    return int(np.quantile(sizes, quantile, method="inverted_cdf"))


def row_lengths(backbone: Backbone, rows: Sequence[dict], cut: int | None) -> Lengths:
    """The text tokens each row of ``rows`` holds in a training batch (by index)."""
    return lambda indices: backbone.text_lengths([rows[i]["text"] for i in indices], cut)
