"""`score`: prompts on a task's split, their predictions (`predict`) and the task's metrics."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptdist.backbones import Backbone
from ptdist.distributed.group import Shard
from ptdist.scoring.prediction import check_task_fits, predict
from ptdist.tasks import TaskRecord, compute_metrics, get_task, load_split


@dataclass
class Scored:
    """K prompts on a task's rows: each prompt's predictions and metrics."""

    task: TaskRecord
    references: list  # class indices, or lists of reference strings
    predictions: list[list]  # one list per prompt, row by row
    metrics: list[dict[str, float]]  # one per prompt

    @classmethod
    def of(cls, task: TaskRecord, rows, predictions: list[list]) -> Scored:
        """``predictions`` (one list per prompt, as `predict` returns them) of ``rows``,
        with the task's metrics of each."""
        refs = references(task, rows)
        return cls(task, refs, predictions, [compute_metrics(task, p, refs) for p in predictions])


def references(task: TaskRecord, rows) -> list:
    """What ``rows`` should be predicted as: class indices, or lists of reference strings."""
    return [r["label"] for r in rows] if task.kind == "classification" else \
        [r["references"] for r in rows]


def score(backbone: Backbone, task_ref: str, prompts: torch.Tensor, *, data_dir: str | None,
          limit: int | None, batch_size: int, max_new_tokens: int, split: str = "eval",
          seed: int = 0) -> Scored:
    """Predictions and metrics of each prompt ``[K, L, d]`` on the task's ``split`` rows
    (evaluation rows by default; ``limit`` of them drawn with ``seed``), read once for all of
    them (`predict`). Under a process group every rank predicts its part of the rows and gets
    all predictions back."""
    task = get_task(task_ref)
    backbone.check_prompt(prompts[0])
    check_task_fits(task, backbone)
    rows = load_split(task, split, limit=limit, data_dir=data_dir, seed=seed).to_list()
    device = next(backbone.parameters()).device
    return Scored.of(task, rows, predict(backbone, prompts.to(device), task, rows, batch_size,
                                         max_new_tokens, Shard.of_group()))
