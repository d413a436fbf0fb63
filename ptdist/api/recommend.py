"""Which source prompt a task that has no prompt yet should start from: the candidates ranked
by their zero-shot score on the task's training rows (and, with a probe run, by the indicator
the store's correlation study ranks best), in this process; with ``then_tpt``, checked by
prompt tuning the task from the top sources, as jobs (docs/recommend.md)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptdist.api.inputs import absolute, open_store, tasks_in
from ptdist.api.transfer import compare, tpt_settings
from ptdist.distributed.ds_config import load_ds_config
from ptdist.errors import PtdistError
from ptdist.orchestration.execution.graph import Execution
from ptdist.orchestration.spec.sweep_spec import Resources
from ptdist.recommend import (Candidate, Recommendation, RecommendSettings, gather,
                              recommend as rank, study_settings, train_probe,
                              write_recommendation)
from ptdist.recommend.tpt import TptOutcome, outcomes, top_sources, tpt_plan
from ptdist.reporting.figures import recommend_figure
from ptdist.store import Store
from ptdist.store.layout import TPT_CURVES
from ptdist.store.results import TptCurveRow
from ptdist.store.tables import read_records
from ptdist.tasks import get_task, load_split
from ptdist.training.config import TrainConfig
from ptdist.transfer.matrix import own_prompts
from ptdist.transfer.tpt import TOLERANCE, run_seeds


@dataclass
class TptCheck:
    """The recommendation checked by training: the task prompt-tuned from each of the top
    sources and from a random init, per seed. ``runs``: vanilla first, then each source in
    predicted order, each over the ``seeds`` (best score, score at step 0, and the paired
    differences from vanilla); ``folder``: its tables, and ``figure``: its learning curves."""

    folder: Path
    seeds: tuple[int, ...]
    runs: list[TptOutcome]
    figure: Path

    def to_json(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "seeds": list(self.seeds),
                "runs": [o.to_json() for o in self.runs]}


@dataclass
class Recommended(Recommendation):
    """The ranked candidates (``rows``, a `RecommendRow` each, in predicted order, with the
    zero-shot signal ``zero`` and the probe's ``indicator`` they rest on), stored at
    ``table`` and drawn at ``figure``; ``tpt``: the check by training (None without
    ``then_tpt``)."""

    table: Path
    figure: Path
    tpt: TptCheck | None

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "table": str(self.table), "figure": str(self.figure),
                **({} if self.tpt is None else {"tpt": self.tpt.to_json()})}


def recommend_sources(model: str, task: str, *, hub: Sequence[str] = (),
                      probe: int | None = None, then_tpt: int | None = None,
                      sample: int = 256, sample_seed: int = 0,
                      seeds: Sequence[int] | None = None,
                      batch_size: int = RecommendSettings.batch_size,
                      precision: str | None = None, data_dir: str | os.PathLike | None = None,
                      train: Mapping[str, Any] | None = None, tolerance: float = TOLERANCE,
                      store: Store | str | os.PathLike | None = None,
                      execution: Execution = Execution(),
                      resources: Resources = Resources()) -> Recommended:
    """Rank the prompts ``task`` (a name, a task YAML path, or the name of a task defined in
    YAML that the store has prompts of) could start from on ``model``: the store's prompts of
    the model, the prompt files and PEFT adapters ``hub`` names (``[TASK=]PATH``), and other
    models' prompts through the store's projectors to it. Each is scored zero-shot on
    ``sample`` training rows of the task (``sample_seed``: which) beside the majority class
    and a random prompt of each of ``seeds`` (default: the seeds of the store's prompts of the
    model); with ``probe`` (steps), a short run on the task is compared with each by the
    indicator the store's correlation study ranks best.

    With ``then_tpt`` (K), the task is then prompt-tuned from each of the top K sources and
    from a random init, per seed, as TPT jobs with ``resources``; ``train``: settings over the
    study's (the store prompts' own) for those runs (steps, lr, eval_every, ds_config...;
    not model, task, init or data_dir), ``tolerance`` as for `tpt`.

    Returns the `Recommended`: the ranking, its table and figure, and the TPT check. Raises
    `PtdistError` before any model loads for a bad setting, an unknown task, its missing data
    or no candidate.
    """
    if sample < 1 or (probe is not None and probe < 1):
        raise PtdistError(f"recommend: sample {sample}, probe {probe}: sample and probe "
                          "(--sample, --probe) take a positive number (rows, steps)")
    opened = open_store(store)
    [task_ref] = tasks_in([task], opened)
    candidates = gather(opened, model, get_task(task_ref).name, hub)
    data = absolute(data_dir)
    load_split(get_task(task_ref), "train", limit=1, data_dir=data)  # before any model loads
    mine = own_prompts(opened.prompts.select(model))
    study = study_settings(mine)
    seeds = tuple(seeds or sorted({m.seed for m in mine}) or (0,))
    checked = None if then_tpt is None else \
        _tpt_settings(model, task_ref, then_tpt, study, {**(train or {}), "data_dir": data},
                      tolerance)
    probe_id = None if probe is None else \
        train_probe(opened, model, task_ref, probe, candidates, study, data)
    settings = RecommendSettings(sample=sample, sample_seed=sample_seed, seeds=seeds,
                                 batch_size=batch_size,
                                 max_length=study.get("max_length", RecommendSettings.max_length),
                                 data_dir=data, precision=precision)
    result = rank(opened, model, task_ref, candidates, settings, probe_id)
    table = write_recommendation(opened, result)
    figure = recommend_figure(result.rows,
                              opened.layout.recommendation_figure(model, result.task))
    tpt = None if checked is None else \
        _tpt_check(opened, result, candidates, task_ref, seeds, then_tpt, checked, execution,
                   resources)
    return Recommended(**vars(result), table=table, figure=figure, tpt=tpt)


def _tpt_settings(model: str, task_ref: str, k: int, study: dict[str, Any],
                  train: dict[str, Any], tolerance: float
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The TPT runs' settings (``train`` over the study's) and placement, checked with their
    DeepSpeed config before any work starts."""
    if k < 1:
        raise PtdistError(f"recommend: then_tpt {k} (--then-tpt): give how many of the top "
                          "sources to train from (at least 1)")
    runs, where = tpt_settings({**study, **train}, tolerance, "recommend")
    TrainConfig(model=model, task=task_ref, **runs)
    load_ds_config(where["ds_config"])
    return runs, where


def _tpt_check(store: Store, result: Recommendation, candidates: Sequence[Candidate],
               task_ref: str, seeds: tuple[int, ...], k: int,
               settings: tuple[dict[str, Any], dict[str, Any]], execution: Execution,
               resources: Resources) -> TptCheck:
    top = top_sources(result, candidates, k)
    runs, where = settings
    plan = tpt_plan(result, top, task_ref, runs, seeds, **where)
    comparison = compare(store, plan, execution, resources)
    [folder], [figure] = comparison.folders, comparison.figures
    curves = read_records(folder / TPT_CURVES, TptCurveRow)
    return TptCheck(folder, seeds, outcomes(comparison.summary, curves,
                                            run_seeds(store, curves), top), figure)
