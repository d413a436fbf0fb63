"""The zero-shot transfer matrix of one model: every source prompt on every target task.

Every prompt given is a source: all seeds (and inits) of each task, so a cell of the matrix
has a spread. Prompts initialised from another prompt (``prompt:`` inits: TPT runs) are not a
task's own prompts and are left out. On each target's evaluation rows, read once for all
prompts (`scoring.predict`: prompts as a batch dimension):

- ``own_score``: the score of the target's own prompt of the source's seed: a seed is one
  replicate of the study, so each source is compared with its own replicate's target prompt
  (`ptdist.store.results.seed_paired`);
- ``relative`` = 100 x score / own_score, the paper's raw relative performance;
- ``chance``: the majority-class score of the rows (`ptdist.transfer.baselines`);
- ``normalized`` = 100 x (score - chance) / (own_score - chance): the share of the own
  prompts' gain over chance that the source recovers (None when an own prompt is not clearly
  above its baselines, so that the denominator may be nothing but noise, or for a generation
  target, which has no majority class);
- ``random_score``: the mean score of random-init starting prompts, one per seed of the
  target's own prompts.

A row of an own prompt on its own task also says whether it is clearly above the majority
class and above the random prompt of its seed (a paired bootstrap over the rows, from
`ptdist.statistics.MIN_ROWS` rows on); a task whose own prompts are not all clearly above both
does not count toward findings.

A target's column depends on nothing but the sources and that target, so the matrix can be
computed a column at a time (`score_target`) and assembled (`write_matrix`): how the columns
are spread over jobs is the orchestration's choice.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ptdist.backbones import Backbone
from ptdist.distributed.group import leads
from ptdist.errors import PtdistError
from ptdist.progress import Progress
from ptdist.scoring import EvalSettings, Scored, inference_precision, load, score
from ptdist.store import Store
from ptdist.store.manifests import PromptManifest
from ptdist.store.results import MatrixRow, seed_paired
from ptdist.store.tables import write_records
from ptdist.transfer.baselines import majority_baseline, margin, random_prompts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MatrixSettings:
    """How the transfer matrix scores its prompts (`ptdist.transfer_matrix`): the fields of
    `ptdist.EvalSettings`, per target task."""

    # evaluation examples per target (None: the whole split)
    eval_limit: int | None = EvalSettings.eval_limit
    batch_size: int = EvalSettings.batch_size  # examples x prompts per forward pass
    max_new_tokens: int = EvalSettings.max_new_tokens  # generation targets
    data_dir: str | None = None
    precision: str | None = None  # bf16 | fp32; None: the prompts' own (inference_precision)
    device: str | None = None  # None: the GPU the job holds, else the CPU
    # None: the whole model in this process; a DeepSpeed config: partitioned over the process
    # group this runs in (`scoring.load`). How it runs, not what it computes: not in repr
    # (a stage's stamp key), like the device.
    ds_config: str | None = field(default=None, repr=False)


def matrix_backbone(sources: Sequence[PromptManifest],
                    settings: MatrixSettings) -> AbstractContextManager[Backbone]:
    """The model of ``sources`` as the matrix runs it, for a block: in their precision (or the
    setting's), on the job's device or partitioned over its group, long enough for every
    source's texts."""
    return load(sources[0].model, max(m.max_length for m in sources),
                inference_precision(sources, settings.precision), settings.device,
                settings.ds_config)


@dataclass
class MatrixResult:
    rows: list[MatrixRow]
    table: Path
    tasks: list[str]  # in the matrix's order: grouped by task type


def own_prompts(prompts: Sequence[PromptManifest]) -> list[PromptManifest]:
    """``prompts`` without those initialised from another prompt (TPT runs)."""
    return [m for m in prompts if not m.init.startswith("prompt:")]


def matrix_sources(prompts: Sequence[PromptManifest]) -> list[PromptManifest]:
    """The own prompts among ``prompts`` (one model's), in the matrix's order: by task type,
    task, seed, id. They must be of one shape: they are evaluated as one batch."""
    sources = sorted(own_prompts(prompts), key=lambda m: (m.task_type, m.task, m.seed, m.id))
    tasks = list(dict.fromkeys(m.task for m in sources))
    if len(tasks) < 2:
        raise PtdistError(f"a transfer matrix needs prompts of at least two different tasks; "
                          f"got {', '.join(tasks) or 'none'}")
    shapes = {m.id: tuple(m.shape) for m in sources}
    if len(set(shapes.values())) > 1:
        raise PtdistError("the source prompts differ in shape (" + ", ".join(
            f"{m.task} {m.id}: {list(shapes[m.id])}" for m in sources) + "); the matrix "
            "evaluates them as one batch, so select prompts of one length (train them with "
            "the same --prompt-length)")
    return sources


def score_target(store: Store, sources: Sequence[PromptManifest], target: str,
                 settings: MatrixSettings, backbone: Backbone) -> list[MatrixRow]:
    """The matrix's column of ``target`` (a task name among the sources'): every source
    prompt on the target's evaluation rows, with the target's baselines. ``backbone``: the
    model (`matrix_backbone`)."""
    owns = [m for m in sources if m.task == target]
    backbone.max_length = owns[0].max_length  # the target's own prompts were trained with it
    seeds = sorted({m.seed for m in owns})
    prompts = torch.cat([torch.stack([store.prompts.tensor(m.id) for m in sources]),
                         random_prompts(backbone, target, seeds, owns[0].prompt_length)])
    scored = score(backbone, owns[0].task_ref, prompts, data_dir=settings.data_dir,
                   limit=settings.eval_limit, batch_size=settings.batch_size,
                   max_new_tokens=settings.max_new_tokens)
    return column_rows(sources, target, seeds, scored)


def column_rows(sources: Sequence[PromptManifest], target: str, seeds: list[int],
                scored: Scored) -> list[MatrixRow]:
    """The rows of ``target``'s column from the scores of the ``sources`` followed by one
    random prompt per seed of ``seeds``."""
    task, refs = scored.task, scored.references
    metric = task.primary_metric
    scores = [m[metric] for m in scored.metrics]
    randoms = dict(zip(seeds, range(len(sources), len(scores))))  # seed -> its random prompt
    majority, chance = majority_baseline(task, metric, refs)
    random_score = statistics.mean(scores[i] for i in randoms.values())
    margins = {k: (margin(task, metric, scored.predictions[k], majority, refs).low
                   if majority is not None else None,
                   margin(task, metric, scored.predictions[k],
                          scored.predictions[randoms[m.seed]], refs).low)
               for k, m in enumerate(sources) if m.task == target}
    # NaN: too few rows for an interval, so not clearly above anything
    clear = {k: above_random > 0 and (above_chance is None or above_chance > 0)
             for k, (above_chance, above_random) in margins.items()}
    rows = [dict(
        model=m.model, source_task=m.task, source_type=m.task_type, source_prompt=m.id,
        source_seed=m.seed, target_task=target, target_type=task.type, metric=metric,
        score=score, chance=chance, random_score=random_score, eval_examples=len(refs),
        above_chance_low=_finite(margins.get(k, (None, None))[0]),
        above_random_low=_finite(margins.get(k, (None, None))[1]), clearly_above=clear.get(k))
        for k, (m, score) in enumerate(zip(sources, scores))]
    return [MatrixRow(**r) for r in seed_paired(rows)]


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def cells(rows: Sequence[MatrixRow], field: str = "relative") -> dict[tuple[str, str],
                                                                     dict[int, float]]:
    """``{(source task, target task): {seed: field}}``, a seed's value the mean over the
    source's prompts of that seed (several inits), undefined values left out, in the matrix's
    order: each cell's replicates."""
    found: dict[tuple[str, str], dict[int, list[float]]] = {}
    for r in rows:
        seeds = found.setdefault((r.source_task, r.target_task), {})
        if getattr(r, field) is not None:
            seeds.setdefault(r.source_seed, []).append(getattr(r, field))
    return {pair: {seed: statistics.mean(v) for seed, v in seeds.items()}
            for pair, seeds in found.items()}


def group_replicates(values: dict[tuple[str, str], dict[int, float]],
                     pairs: Sequence[tuple[str, str]]) -> dict[int, float]:
    """Per seed, the mean of ``pairs``' cells (`cells`) over the seeds every pair has: one
    replicate of the group's mean transfer per seed."""
    if not pairs:
        return {}
    seeds = set.intersection(*(set(values[p]) for p in pairs))
    return {s: statistics.mean(values[p][s] for p in pairs) for s in sorted(seeds)}


def unusable_tasks(rows: Iterable[MatrixRow]) -> list[str]:
    """Tasks with an own prompt that is not clearly above its baselines: they do not count
    toward findings."""
    return sorted({r.target_task for r in rows if r.clearly_above is False})


def write_matrix(store: Store, sources: Sequence[PromptManifest],
                 rows: Sequence[MatrixRow]) -> MatrixResult:
    """The matrix of ``sources`` from its columns, stored at `StoreLayout.matrix`."""
    order = list(dict.fromkeys(m.task for m in sources))
    position = {m.id: i for i, m in enumerate(sources)}
    mine = [r for r in rows if r.source_prompt in position]
    missing = sorted(set(order) - {r.target_task for r in mine})
    if missing:
        raise PtdistError(f"the transfer matrix has no column for target(s) "
                          f"{', '.join(missing)}; score them first")
    index = {task: i for i, task in enumerate(order)}
    mine.sort(key=lambda r: (index[r.target_task], position[r.source_prompt]))
    table = store.layout.matrix(sources[0].model)
    if leads():  # every rank of a group has every row: one writes them
        write_records(table, MatrixRow, mine)
    return MatrixResult(mine, table, order)


def store_columns(store: Store, sources: Sequence[PromptManifest], targets: Sequence[str],
                  settings: MatrixSettings) -> None:
    """The columns of ``targets`` (the model loaded once), each stored at
    `StoreLayout.matrix_column` for `write_matrix` to assemble."""
    with matrix_backbone(sources, settings) as backbone:
        for target in targets:
            rows = score_target(store, sources, target, settings, backbone)
            if leads():
                write_records(store.layout.matrix_column(sources[0].model, target), MatrixRow,
                              rows)


def transfer_matrix(store: Store, prompts: Sequence[PromptManifest],
                    settings: MatrixSettings) -> MatrixResult:
    """The whole matrix of one model's own ``prompts``, in this process."""
    sources = matrix_sources(prompts)
    targets = list(dict.fromkeys(m.task for m in sources))
    rows = []
    with matrix_backbone(sources, settings) as backbone, \
            Progress(f"transfer matrix of {sources[0].model}", len(targets), "target", log,
                     every=1) as progress:
        for k, target in enumerate(targets):
            rows += score_target(store, sources, target, settings, backbone)
            progress.update(k + 1, scored=target)
    return write_matrix(store, sources, rows)
