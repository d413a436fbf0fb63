"""Cross-task transfer of one model's prompts: the zero-shot transfer matrix and TPT_task, run
as jobs (on Ray by default; ``Execution(local=True)``: one after another in this process)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ptdist.api.inputs import absolute, frozen_model, open_store, prompts_of, tasks_in
from ptdist.errors import PtdistError
from ptdist.orchestration.execution.graph import Execution
from ptdist.orchestration.jobs.stages import run_matrix, run_tpt
from ptdist.orchestration.spec.sweep_spec import Resources
from ptdist.reporting.figures import matrix_figure, tpt_figure
from ptdist.store import Store
from ptdist.store.layout import TPT_CURVES, TPT_FIGURE
from ptdist.store.results import TptCurveRow
from ptdist.store.tables import read_records
from ptdist.training.config import TrainConfig
from ptdist.transfer.matrix import MatrixResult, MatrixSettings
from ptdist.transfer.tpt import TOLERANCE, TptPlan, TptResult, run_seeds, task_plan


@dataclass
class TransferMatrix(MatrixResult):
    """The zero-shot transfer matrix of one model: ``rows`` (a `MatrixRow` per source prompt
    and target task: raw score, relative and chance-normalised performance, the target's
    baselines), the Parquet ``table`` they are stored in, the ``tasks`` in the matrix's order,
    and the ``heatmap`` (PNG) of relative performance."""

    heatmap: Path


@dataclass
class TptComparison(TptResult):
    """A TPT comparison: the ``summary`` rows (a `TptSummaryRow` per run: start and best
    score, steps to vanilla PT's best and the speed-up), each target's ``folders`` (curves and
    summary as Parquet) and each target's learning-curve ``figures`` (PNG)."""

    figures: list[Path]


def transfer_matrix(model: str, tasks: Sequence[str], *,
                    store: Store | str | os.PathLike | None = None,
                    settings: MatrixSettings = MatrixSettings(),
                    execution: Execution = Execution(),
                    resources: Resources = Resources()) -> TransferMatrix:
    """Score every stored prompt of ``model`` on ``tasks`` (two or more: names, task YAML
    paths, or names of tasks defined in YAML that the store has prompts of; all seeds) on
    every one of those tasks, a job per target task, each with ``resources``
    (``Resources(workers=N)`` with ``settings.ds_config``: the model partitioned over a worker
    group of N processes).

    Returns the `TransferMatrix`: its rows, the stored table and the heatmap. Raises
    `PtdistError` before any job starts for a task without a prompt of the model, prompts of
    different shapes, or an unknown DeepSpeed config.
    """
    frozen_model(resources, settings.ds_config)
    opened = open_store(store)
    prompts = prompts_of(opened, model, tasks_in(tasks, opened))
    result = run_matrix(opened, prompts, replace(settings, data_dir=absolute(settings.data_dir)),
                        execution, resources)
    heatmap = matrix_figure(result.rows, opened.layout.matrix_figure(model))
    return TransferMatrix(**vars(result), heatmap=heatmap)


def tpt(model: str, target_tasks: Sequence[str], source_tasks: Sequence[str], *,
        train: Mapping[str, Any] | None = None, tolerance: float = TOLERANCE,
        store: Store | str | os.PathLike | None = None, execution: Execution = Execution(),
        resources: Resources = Resources()) -> TptComparison:
    """TPT_task: on each of ``target_tasks``, vanilla prompt tuning of ``model`` beside prompt
    tuning initialised from each of ``source_tasks`` (a task: its best stored prompt of
    ``model``, or a prompt id), each run a job with ``resources``. A task (target or source) is
    a name, a task YAML path, or the name of a task defined in YAML that the store has prompts
    of.

    ``train``: the `TrainConfig` settings every run shares (steps, lr, seed, batch_size,
    eval_every, data_dir, ds_config...; not model, task or init, which TPT sets); the runs take
    the source prompts' length. Runs already stored (vanilla PT is often a run of the study)
    are not trained again. ``tolerance``: also read each speed-up at this fraction of vanilla
    PT's best score.

    Returns the `TptComparison`: a summary row per run with its speed-up, and each target's
    tables and learning-curve figure.
    """
    opened = open_store(store)
    runs, where = tpt_settings(train, tolerance, "tpt")
    sources = [s if opened.prompts.has(s) else tasks_in([s], opened)[0] for s in source_tasks]
    plan = task_plan(opened, model, tasks_in(target_tasks, opened), sources,
                     opened.prompts.select(model), runs, **where)
    return compare(opened, plan, execution, resources)


def tpt_settings(train: Mapping[str, Any] | None, tolerance: float,
                 what: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``train`` (`TrainConfig` settings but model, task and init, which ``what`` sets) split
    into the settings every run shares and the plan's placement: where the data is, the
    DeepSpeed config, and ``tolerance``. An unknown or reserved key stops with one message."""
    runs = dict(train or {})
    reserved = ("model", "task", "init")
    known = [f.name for f in fields(TrainConfig) if f.name not in reserved]
    wrong = sorted(k for k in runs if k not in known)
    if wrong:
        raise PtdistError(f"{what}: train cannot set {', '.join(wrong)}; it takes "
                          f"TrainConfig's fields but {', '.join(reserved)}: {', '.join(known)}")
    if not 0 < tolerance <= 1:
        raise PtdistError(f"{what}: tolerance {tolerance} is not a fraction of vanilla PT's "
                          "best score; give one in (0, 1], e.g. 0.99")
    return runs, {"data_dir": absolute(runs.pop("data_dir", None)),
                  "ds_config": runs.pop("ds_config", TrainConfig.ds_config),
                  "tolerance": tolerance}


def compare(store: Store, plan: TptPlan, execution: Execution,
            resources: Resources) -> TptComparison:
    """Run ``plan``'s runs that are not stored, then its summary, and draw each target's
    learning curves."""
    result = run_tpt(store, plan, resources, execution)
    figures = []
    for folder in result.folders:
        curves = read_records(folder / TPT_CURVES, TptCurveRow)
        figures.append(tpt_figure(curves, [r for r in result.summary
                                           if r.target_task == folder.name],
                                  folder / TPT_FIGURE, run_seeds(store, curves)))
    return TptComparison(**vars(result), figures=figures)
