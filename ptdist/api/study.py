"""Many runs at once, as jobs: a sweep spec's prompt-tuning runs (Ray Tune trials), and a whole
study (prompt tuning, transfer matrix, activations, indicators, correlation, projectors, TPT)
as one graph of jobs with its report. On Ray by default; ``Execution(local=True)``: one job
after another in this process."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ptdist.api.inputs import store_path
from ptdist.errors import PtdistError
from ptdist.orchestration.execution.graph import Execution, GraphOutcome, describe_jobs
from ptdist.orchestration.jobs.replicate import run_study, study_jobs, study_packing
from ptdist.orchestration.jobs.sweep import SweepOutcome, run_sweep
from ptdist.orchestration.planning.estimate import describe_costs, job_costs, stage_costs
from ptdist.orchestration.planning.plans import describe_plans, describe_training, model_plans
from ptdist.orchestration.planning.schedule import describe_schedule, simulate
from ptdist.orchestration.spec.spec_presets import preset as shipped_preset, preset_names
from ptdist.orchestration.spec.study_spec import Study, load_study
from ptdist.orchestration.spec.sweep_spec import SweepSpec, load_spec
from ptdist.reporting.report import write_report
from ptdist.store import Store
from ptdist.tasks import get_task, prepare_packaged_data, unprepared_data


@dataclass
class StudyOutcome(GraphOutcome):
    """What a study did: each job's outcome (``jobs``; ``failed``: those that failed or were
    blocked by a failure, which are there rather than raised), the ``study`` as read, and the
    ``report`` (its report.md; None when it was not written). A dry run runs nothing: its
    ``listing`` names every job, each model's plan and the estimated costs."""

    study: Study
    report: Path | None = None
    listing: str | None = None


def sweep(spec: str | os.PathLike, *, store: Store | str | os.PathLike | None = None,
          data_dir: str | os.PathLike | None = None, cluster: str | os.PathLike | None = None,
          execution: Execution = Execution(), pack: int | None = None,
          dry_run: bool = False) -> SweepOutcome:
    """Train every prompt-tuning run of the sweep spec ``spec`` (a YAML file, docs/sweeps.md; or
    a preset's name, e.g. ``"tiny"``) whose prompt is not stored, as Ray Tune trials (or in this
    process), holding the store's run lock. ``store``, ``data_dir`` and ``pack`` (runs per job)
    override the spec's; ``cluster``: a Ray cluster config whose node types the runs must fit;
    ``dry_run`` lists the runs and trains none.

    Returns the `SweepOutcome`: a row per run (trained, stored or failed, with its prompt id
    and score; ``failed``: those that failed, which are there rather than raised), the results
    table, and a dry run's ``listing``.
    """
    loaded = load_spec(spec, storage_path=store_path(store), data_dir=data_dir,
                       cluster=cluster, max_concurrent=execution.max_concurrent, pack=pack)
    loaded.store().require_writable()
    (_require_prepared if dry_run else _prepare_data)(loaded)
    return run_sweep(loaded, execution, dry_run=dry_run)


def replicate(study: str | os.PathLike | None = None, *, preset: str | None = None,
              store: Store | str | os.PathLike | None = None,
              data_dir: str | os.PathLike | None = None,
              execution: Execution = Execution(), pack: int | None = None,
              dry_run: bool = False) -> StudyOutcome:
    """Run a whole study as one graph of jobs and write its report: ``study`` (a study YAML:
    a sweep spec plus its ``stages``; docs/replicate.md) or a ``preset`` that ships with
    ptdist (quickstart, paper-tasks, paper; it writes to $PTDIST_STORE or ./store unless
    ``store``). Each job starts when what it needs is stored; a re-run does only what
    is missing. ``store``, ``data_dir`` and ``pack`` (runs per job) override the study's;
    ``dry_run`` plans every job and runs none.

    Returns the `StudyOutcome`: every job's outcome and the report's path.
    """
    if (study is None) == (preset is None):
        raise PtdistError("give a study (a study YAML file) or a preset "
                          f"({', '.join(preset_names())}), one of them")
    loaded = load_study(study if study is not None else shipped_preset(preset),
                        storage_path=store_path(store), data_dir=data_dir,
                        max_concurrent=execution.max_concurrent, pack=pack)
    loaded.spec.store().require_writable()
    (_require_prepared if dry_run else _prepare_data)(loaded.spec)
    if dry_run:
        return StudyOutcome([], loaded, listing=_plan(loaded, execution))
    outcome = run_study(loaded, write_report, execution)
    written = outcome.outcome("report").status in ("ran", "stored")
    report = Store(loaded.spec.storage_path).layout.report_dir(loaded.spec.name) / "report.md"
    return StudyOutcome(outcome.jobs, loaded, report if written else None)


def _prepare_data(spec: SweepSpec) -> None:
    """The packaged data sets the spec reads and its data_dir lacks, written there first."""
    prepare_packaged_data([get_task(t) for t in spec.tasks], spec.data_dir)


def _require_prepared(spec: SweepSpec) -> None:
    """A dry run writes nothing, so it cannot prepare data; it names the packaged data sets
    that a real run would prepare first instead of failing on their missing files."""
    missing = unprepared_data([get_task(t) for t in spec.tasks], spec.data_dir)
    if missing:
        raise PtdistError(
            f"the data of {', '.join(missing)} is not in {spec.data_dir} yet: a run of this "
            "study prepares it first (from the package index), and a dry run writes nothing. "
            "Run it once without --dry-run, or give --data-dir a folder that holds it")


def _plan(study: Study, execution: Execution) -> str:
    """The dry run: the jobs, the training settings, the memory plan, the estimate and the
    schedule on the cluster, after the checks a run makes (a spec that would be refused is
    refused here too)."""
    spec = study.spec
    packing = study_packing(study, execution)
    jobs = study_jobs(study, write_report, packing)
    costs = job_costs(study, jobs, packing.cluster)
    sections = [
        f"study {spec.name}: {len(spec.models)} model(s), {len(spec.tasks)} task(s), "
        f"{len(spec.seeds)} seed(s), {len(spec.inits)} init(s); store {spec.storage_path}",
        describe_jobs(jobs), describe_training(spec),
        describe_plans(model_plans(spec, packing.cluster)), describe_costs(stage_costs(costs))]
    if packing.cluster.gpus():
        sections.append(describe_schedule(simulate(costs, packing.cluster)))
    return "\n".join(sections)
