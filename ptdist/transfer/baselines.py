"""What a prompt's score is compared with on a task's evaluation rows, and how clearly it beats
them.

- the **majority-class score**: the task's primary metric of predicting, for every row, the
  class most frequent among those rows (classification only). It is the chance level of the
  chance-normalised transfer;
- the **random-prompt score**: a prompt drawn as a random-init run on the task starts (uniform
  in [-0.5, 0.5], `ptdist.backbones.initial_prompt`, drawn from the run's seed and task),
  scored on the same rows through the same frozen model.

A prompt is *clearly above* a baseline when the paired bootstrap of the difference (the rows
resampled with replacement, both predictions recomputed on the same resample) puts the lower
end of its 95 % interval above zero; with fewer than `ptdist.statistics.MIN_ROWS` rows there is
no interval, and no prompt is clearly above anything.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from ptdist.backbones import Backbone, PromptInit, initial_prompt
from ptdist.backbones.prompt import init_generator
from ptdist.statistics import RESAMPLES, SEED, Interval, resamples, row_interval
from ptdist.tasks import TaskRecord, compute_metrics


def majority_predictions(references: Sequence[int]) -> list[int]:
    """The most frequent class of ``references`` (ties: the lowest index), for every row."""
    counts = Counter(references)
    top = max(counts.values())
    return [min(c for c, k in counts.items() if k == top)] * len(references)


def majority_baseline(task: TaskRecord, metric: str,
                      references: Sequence) -> tuple[list[int] | None, float | None]:
    """The majority class's predictions on ``references`` and its score (the chance level);
    (None, None) for a generation task."""
    if not task.is_classification:
        return None, None
    majority = majority_predictions(references)
    return majority, compute_metrics(task, majority, references)[metric]


def random_prompts(backbone: Backbone, task: str, seeds: Sequence[int],
                   length: int) -> torch.Tensor:
    """The starting prompt ``[L, d]`` of a random-init run on ``task`` (a name) per seed, as a
    batch ``[len(seeds), L, d]``."""
    return torch.stack([initial_prompt(PromptInit(), backbone.word_embeddings, length, set(),
                                       None, init_generator(seed, task)) for seed in seeds])


def resampled_scores(task: TaskRecord, metric: str, predictions: Sequence, references: Sequence,
                     draws: np.ndarray) -> np.ndarray:
    """``metric`` of ``predictions`` on each resample of rows (``draws``: ``[count, n]``)."""
    if metric == "accuracy":  # a mean over rows: one vectorised pass
        correct = np.array([p == r for p, r in zip(predictions, references)], dtype=np.float64)
        return 100.0 * correct[draws].mean(axis=1)
    return np.array([compute_metrics(task, [predictions[i] for i in idx],
                                     [references[i] for i in idx])[metric] for idx in draws])


def margin(task: TaskRecord, metric: str, predictions: Sequence, baseline: Sequence,
           references: Sequence) -> Interval:
    """(prompt - baseline) in points of ``metric`` on the rows, with its 95 % paired-bootstrap
    interval (none below `MIN_ROWS` rows)."""
    draws = resamples(len(references), RESAMPLES, SEED)
    diff = resampled_scores(task, metric, predictions, references, draws) - \
        resampled_scores(task, metric, baseline, references, draws)
    whole = np.arange(len(references))[None]
    estimate = float((resampled_scores(task, metric, predictions, references, whole)
                      - resampled_scores(task, metric, baseline, references, whole))[0])
    return row_interval(estimate, diff, len(references))
