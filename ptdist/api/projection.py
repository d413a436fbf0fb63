"""Cross-model transfer through projectors: train one from stored prompts, evaluate it zero-shot
on the target model, TPT_model from its projected prompts, and a projector for every ordered
pair of a sweep's models (the pair scheduler, as jobs)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from ptdist.api.inputs import absolute, open_store, prompts_of, store_path, tasks_in
from ptdist.api.transfer import TptComparison, compare, tpt_settings
from ptdist.orchestration.execution.graph import Execution
from ptdist.orchestration.jobs.pairs import PairSettings, PairsOutcome, run_pairs
from ptdist.orchestration.spec.sweep_spec import Resources, load_spec
from ptdist.projection.config import ProjectorConfig
from ptdist.projection.evaluation import evaluate_projector as evaluate_stage
from ptdist.projection.modes import train_projector as train_stage
from ptdist.projection.tpt import model_plan
from ptdist.scoring import EvalSettings
from ptdist.store import Store
from ptdist.store.manifests import ProjectorManifest
from ptdist.store.results import ProjectorEvalRow
from ptdist.transfer.tpt import TOLERANCE


def train_projector(config: ProjectorConfig,
                    store: Store | str | os.PathLike | None = None) -> ProjectorManifest:
    """Train the projector ``config`` describes, in this process, and store it. Prompts it
    learns from that ``config`` leaves empty are every stored prompt of the model on
    ``config.tasks`` (the source's; in distance mode the target's too).

    Returns the projector's `ProjectorManifest`: its ``id`` (what `evaluate_projector` and
    `tpt_model` take), and how it trained (the distance before and after, or the score on the
    tasks). A projector already stored is returned as it is.
    """
    opened = open_store(store)
    config = replace(config, tasks=tuple(tasks_in(config.tasks, opened)))

    def ids(model: str) -> tuple[str, ...]:
        return tuple(sorted(m.id for m in prompts_of(opened, model, config.tasks)))

    if not config.source_prompts:
        config = replace(config, source_prompts=ids(config.source_model))
    if config.mode == "distance" and not config.target_prompts:
        config = replace(config, target_prompts=ids(config.target_model))
    return train_stage(replace(config, data_dir=absolute(config.data_dir)), opened)


def evaluate_projector(projector: str, tasks: Sequence[str], *,
                       store: Store | str | os.PathLike | None = None,
                       settings: EvalSettings = EvalSettings()) -> list[ProjectorEvalRow]:
    """Score the source model's best stored prompt of each of ``tasks``, projected by
    ``projector`` (an id), zero-shot on the target model, beside the untrained projector's and
    the target's own best prompt, on the same rows.

    Returns a `ProjectorEvalRow` per task (also stored with the projector): the scores, the
    relative performance (projected / own, %), the distance to the own prompt, whether the
    projector trained on the task, and intervals against the untrained projector and the
    majority class.
    """
    opened = open_store(store)
    tasks = tasks_in(tasks, opened)
    manifest = opened.projectors.manifest(projector)
    prompts = [m for model in (manifest.source_model, manifest.target_model)
               for m in opened.prompts.select(model)]
    return evaluate_stage(opened, projector, tasks, prompts,
                          replace(settings, data_dir=absolute(settings.data_dir)))


def tpt_model(projector: str, target_tasks: Sequence[str], *,
              train: Mapping[str, Any] | None = None, tolerance: float = TOLERANCE,
              store: Store | str | os.PathLike | None = None, execution: Execution = Execution(),
              resources: Resources = Resources()) -> TptComparison:
    """TPT_model: on each of ``target_tasks``, vanilla prompt tuning of ``projector``'s target
    model beside prompt tuning initialised with the projection of the source model's best prompt for
    that task, each run a job with ``resources``. ``train`` and ``tolerance`` as for `tpt`.

    Returns the `TptComparison`: a summary row per run with its speed-up, and each target's
    tables and learning-curve figure.
    """
    opened = open_store(store)
    runs, where = tpt_settings(train, tolerance, "tpt_model")
    targets = tasks_in(target_tasks, opened)
    manifest = opened.projectors.manifest(projector)
    plan = model_plan(opened, projector, targets,
                      opened.prompts.select(manifest.source_model), runs, **where)
    return compare(opened, plan, execution, resources)


def project_pairs(spec: str | os.PathLike, settings: PairSettings, *,
                  store: Store | str | os.PathLike | None = None,
                  data_dir: str | os.PathLike | None = None, execution: Execution = Execution(),
                  pack: int | None = None, dry_run: bool = False) -> PairsOutcome:
    """Train and evaluate a projector for every ordered pair of the models of the sweep spec
    ``spec`` (a YAML file, or a preset's name), training first the prompts they need; each job
    starts when its inputs are stored. ``store``, ``data_dir`` and ``pack`` (runs per job)
    override the spec's; ``dry_run`` plans the jobs and runs none.

    Returns the `PairsOutcome`: the spec as read, the jobs, each one's outcome (``graph``;
    ``graph.failed``: the jobs that failed, which are there rather than raised) and the
    cross-model table of every pair.
    """
    loaded = load_spec(spec, storage_path=store_path(store), data_dir=data_dir,
                       max_concurrent=execution.max_concurrent, pack=pack)
    opened = loaded.store()
    opened.require_writable()
    settings = replace(settings, train_tasks=tuple(tasks_in(settings.train_tasks, opened)),
                       eval_tasks=tuple(tasks_in(settings.eval_tasks, opened)))
    return run_pairs(loaded, settings, execution, dry_run=dry_run)
