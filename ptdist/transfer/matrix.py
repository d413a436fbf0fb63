"""The zero-shot transfer matrix of one model: every source task's prompt on every target task.

Relative performance = score of the source prompt on the target / score of the target's own
prompt on the target (x 100), both measured here on the same evaluation rows, so the diagonal
is 100 % by construction. Each target's evaluation data is passed once for all source prompts
(`predict_each`: prompts as a batch dimension). A target's column depends on nothing but the
sources and that target, so the matrix can be computed a column at a time (`score_target`) and
assembled (`write_matrix`): how the columns are spread over jobs is the orchestration's choice.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ptdist.errors import PtdistError
from ptdist.store import Store
from ptdist.store.manifests import PromptManifest
from ptdist.store.prompts import best_of
from ptdist.store.results import MatrixRow
from ptdist.store.tables import write_records
from ptdist.tasks import get_task
from ptdist.training.evaluation import eval_backbone, inference_precision, score_prompts


@dataclass(frozen=True)
class MatrixSettings:
    eval_limit: int | None = 1000  # evaluation examples per target (None: the whole split)
    batch_size: int = 64  # examples x prompts per forward pass
    max_new_tokens: int = 64  # generation targets
    data_dir: str | None = None
    precision: str | None = None  # bf16 | fp32; None: the prompts' own (inference_precision)
    device: str | None = None  # None: the GPU the job holds, else the CPU


def matrix_backbone(sources: Sequence[PromptManifest], settings: MatrixSettings):
    """The model of ``sources`` as the matrix runs it: in their precision (or the setting's),
    on the job's device, long enough for every source's texts."""
    return eval_backbone(sources[0].model, max(m.max_length for m in sources),
                         inference_precision(sources, settings.precision), settings.device)


@dataclass
class MatrixResult:
    rows: list[MatrixRow]
    table: Path
    tasks: list[str]  # in the matrix's order: grouped by task type


def matrix_sources(prompts: Sequence[PromptManifest]) -> list[PromptManifest]:
    """The best prompt of each task among ``prompts`` (one model's), in the matrix's order:
    by task type, then name. They must be of one shape: they are evaluated as one batch."""
    by_task: dict[str, list[PromptManifest]] = {}
    for m in prompts:
        by_task.setdefault(m.task, []).append(m)
    if len(by_task) < 2:
        raise PtdistError(f"a transfer matrix needs prompts of at least two different tasks; "
                          f"got {', '.join(by_task) or 'none'}")
    sources = sorted((best_of(mine) for mine in by_task.values()),
                     key=lambda m: (m.task_type, m.task))
    shapes = {m.task: tuple(m.shape) for m in sources}
    if len(set(shapes.values())) > 1:
        raise PtdistError("the source prompts differ in shape (" + ", ".join(
            f"{n}: {list(s)}" for n, s in shapes.items()) + "); the matrix evaluates them as "
            "one batch, so select prompts of one length (train them with the same "
            "--prompt-length)")
    return sources


def score_target(store: Store, sources: Sequence[PromptManifest], target: str,
                 settings: MatrixSettings, backbone=None) -> list[MatrixRow]:
    """The matrix's column of ``target`` (a task name among the sources'): every source
    prompt on the target's evaluation rows. ``backbone``: the model, already loaded."""
    own = next(m for m in sources if m.task == target)
    if backbone is None:
        backbone = matrix_backbone(sources, settings)
    backbone.max_length = own.max_length  # the target's own prompt was trained with it
    prompts = torch.stack([store.prompts.tensor(m.id) for m in sources])
    scores, n = score_prompts(backbone, own.task_ref, prompts, data_dir=settings.data_dir,
                              limit=settings.eval_limit, batch_size=settings.batch_size,
                              max_new_tokens=settings.max_new_tokens)
    record = get_task(own.task_ref)
    metric = record.primary_metric
    own_score = scores[sources.index(own)][metric]
    return [MatrixRow(model=own.model, source_task=m.task, source_type=m.task_type,
                      source_prompt=m.id, target_task=target, target_type=record.type,
                      metric=metric, score=s[metric], own_score=own_score,
                      relative=100.0 * s[metric] / own_score if own_score else None,
                      eval_examples=n)
            for m, s in zip(sources, scores)]


def write_matrix(store: Store, sources: Sequence[PromptManifest],
                 rows: Sequence[MatrixRow]) -> MatrixResult:
    """The matrix of ``sources`` from its columns, stored at `StoreLayout.matrix`."""
    order = [m.task for m in sources]
    ids = {m.id for m in sources}
    mine = [r for r in rows if r.source_prompt in ids]
    missing = sorted(set(order) - {r.target_task for r in mine})
    if missing:
        raise PtdistError(f"the transfer matrix has no column for target(s) "
                          f"{', '.join(missing)}; score them first")
    index = {task: i for i, task in enumerate(order)}
    mine.sort(key=lambda r: (index[r.target_task], index[r.source_task]))
    model = sources[0].model
    return MatrixResult(mine, write_records(store.layout.matrix(model), MatrixRow, mine), order)


def transfer_matrix(store: Store, prompts: Sequence[PromptManifest],
                    settings: MatrixSettings) -> MatrixResult:
    """The whole matrix of one model's ``prompts`` (the best per task), in this process."""
    sources = matrix_sources(prompts)
    backbone = matrix_backbone(sources, settings)
    rows = []
    for k, target in enumerate(m.task for m in sources):
        rows += score_target(store, sources, target, settings, backbone)
        print(f"[transfer] {sources[0].model}: target {target} scored ({k + 1}/{len(sources)})",
              file=sys.stderr, flush=True)
    return write_matrix(store, sources, rows)
