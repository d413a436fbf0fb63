"""What a study will cost before it runs: each job's work (the FLOPs it computes per GPU and the
bytes each GPU receives, by the cost model `cost_model.py`), timed on the card it is planned on
(`Cluster.card_for`), and the GPU-hours per stage. `schedule.py` places the same jobs on the
cluster's nodes for the wall-clock.

A prompt-tuning run computes ``steps x batch`` training examples (forward, backward to the
prompt, and with activation checkpointing the forward again) and an evaluation of
``eval_limit`` examples (1000 when the whole split is asked for) every ``eval_every`` steps
and at step 0: classification one decoder step, generation ``max_new_tokens``. A run on
several GPUs splits its batch over them, and under ZeRO-3 each GPU receives the other GPUs'
share of the weights at every gather. The matrix runs every own prompt of a model on every
target task's evaluation rows; capture runs each prompt alone (the prompt protocol) or on
``examples`` rows (data); a task-mode projector trains through its target like a run; its
evaluation scores three prompts per shared task; a TPT plan names runs like the study's own.
Jobs that run no model (indicators, correlation, the report, a distance-mode projector) are
not timed. It is an estimate to plan a budget with: early stopping makes runs shorter, and
the utilisation (`UTILISATION`) is assumed until the GPU check measures it.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from ptdist.distributed.ds_config import precision_of, zero_stage
from ptdist.errors import PtdistError
from ptdist.neurons.collect import CaptureSettings
from ptdist.orchestration.execution.graph import Job
from ptdist.orchestration.jobs.job_costs import stage_of
from ptdist.orchestration.planning.cost_model import (UTILISATION, example_flops, fills_gpu,
                                                      zero3_bytes)
from ptdist.orchestration.planning.plans import CLASS_TARGET
from ptdist.orchestration.planning.resources import Cluster
from ptdist.orchestration.spec.study_spec import Study
from ptdist.orchestration.spec.sweep_spec import ModelEntry, Resources
from ptdist.projection.config import ProjectorConfig
from ptdist.tasks import get_task
from ptdist.training.config import TrainConfig
from ptdist.training.hardware import Card
from ptdist.training.memory import model_memory
from ptdist.transfer.matrix import MatrixSettings

STAGES = ("prompt", "matrix", "capture", "indicators", "correlate", "projector", "eval",
          "tpt", "tpt_model", "report")
DEFAULT_ROWS = 1000  # evaluation rows assumed when a setting asks for the whole split
PROJECTOR_PROMPTS = 3  # prompts a projector evaluation scores per task


@dataclass(frozen=True)
class Work:
    """What a job computes on each GPU (each process) it holds."""

    flops: float
    moved: float  # bytes received per GPU (ZeRO-3 gathers)
    precision: str

    def seconds(self, card: Card) -> float:
        return self.flops / (card.peak(self.precision) * UTILISATION) + \
            self.moved / card.link_bytes_s

    def __add__(self, other: Work) -> Work:
        return Work(self.flops + other.flops, self.moved + other.moved, self.precision)

    def __mul__(self, k: float) -> Work:
        return Work(self.flops * k, self.moved * k, self.precision)


@dataclass(frozen=True)
class JobCost:
    """One job's estimate. A plan job (TPT) is ``pieces`` runs, each ``work`` on ``holds``."""

    job: Job
    stage: str
    holds: dict[str, float]  # what the job (each piece) holds on one node
    work: Work | None  # None: runs no model, or the model is unknown (``unknown``)
    card: Card | None  # the card it is planned on; None: no GPU
    pieces: int = 1
    runs: int = 1  # prompt-tuning runs in the job (a pack: several)
    compute_bound: bool = False  # a run of it keeps its GPU busy alone (`fills_gpu`)
    unknown: bool = False

    @property
    def gpus(self) -> float:
        return self.holds.get("GPU", 0.0)

    def seconds(self, card: Card | None = None) -> float:
        """Seconds of one piece on ``card`` (default: the card it is planned on); 0 for a job
        that holds no GPU or runs no model."""
        card = card or self.card
        if self.work is None or card is None or not self.gpus:
            return 0.0
        return self.work.seconds(card)

    @property
    def gpu_hours(self) -> float:
        return self.pieces * self.seconds() * self.gpus / 3600


@dataclass(frozen=True)
class StageCost:
    stage: str
    jobs: int
    to_run: int
    gpu_hours: float | None  # None: a model's size is unknown


class _Costing:
    """The work of each kind of job of one study, per model."""

    def __init__(self, study: Study, cluster: Cluster):
        self.study, self.spec, self.cluster = study, study.spec, cluster
        self.models = {m.name: m for m in self.spec.models}

    def runs(self, model: ModelEntry) -> list[TrainConfig]:
        return [r.config for r in self.spec.runs() if r.config.model == model.name]

    def train_run(self, config: TrainConfig, model: ModelEntry) -> Work:
        """One prompt-tuning run of ``model`` (as TPT runs and task-mode projectors train)."""
        ds, res = model.ds_settings, model.resources
        precision, stage = precision_of(ds), zero_stage(ds)
        accum, gpus = int(ds.get("gradient_accumulation_steps", 1)), max(1, res.workers)
        generates = get_task(config.task).kind == "generation"
        target = config.max_new_tokens if generates else CLASS_TARGET
        example = example_flops(config.model, precision, config.prompt_length,
                                config.max_length, target)
        evaluate = example_flops(config.model, precision, config.prompt_length,
                                 config.max_length, target,
                                 "generate" if generates else "classify").forward.total
        evals, rows = config.steps // config.eval_every + 1, config.eval_limit or DEFAULT_ROWS
        flops = config.steps * config.batch_size / gpus * \
            example.train(config.activation_checkpointing) + evals * rows / gpus * evaluate
        moved = 0.0
        if stage == 3 and gpus > 1:
            memory = model_memory(config.model, precision)
            micro = config.batch_size // (gpus * accum)
            moved = config.steps * zero3_bytes(
                memory.parameters, memory.bytes, gpus, accum, config.activation_checkpointing,
                config.prompt_length * memory.backbone.hidden_size) + \
                evals * math.ceil(rows / (gpus * micro * 2)) * self._gather(memory, gpus)
        return Work(flops, moved, precision)

    def inference(self, model: ModelEntry, forwards: float, per_forward: float,
                  rows: float, batch: int, precision: str) -> Work:
        """``forwards`` example forwards of ``per_forward`` FLOPs on the model's inference
        job (`ModelEntry.inference`: a ZeRO-3 group shares them and gathers each layer per
        batch of ``batch`` rows), over ``rows`` rows in all."""
        resources, sharded = model.inference()
        gpus = resources.workers if sharded else 1
        moved = 0.0
        if sharded and gpus > 1:
            memory = model_memory(model.name, precision)
            moved = math.ceil(rows / (gpus * batch)) * self._gather(memory, gpus)
        return Work(forwards * per_forward / gpus, moved, precision)

    @staticmethod
    def _gather(memory, gpus: int) -> float:
        return (gpus - 1) / gpus * memory.parameters * memory.bytes

    def mean_run(self, model: ModelEntry) -> Work:
        runs = self.runs(model)
        total = sum((self.train_run(c, model) for c in runs[1:]), self.train_run(runs[0], model))
        return total * (1 / len(runs))

    def precision(self, model: ModelEntry, setting: dict) -> str:
        return setting.get("precision") or precision_of(model.ds_settings)

    def matrix(self, model: ModelEntry) -> Work:
        settings, runs = self.study.transfer, self.runs(model)
        precision = self.precision(model, settings)
        rows = settings.get("eval_limit", MatrixSettings.eval_limit) or DEFAULT_ROWS
        forwards = per = 0.0
        for task in self.spec.tasks_of(model):
            f = self._forward(model, runs[0], task, precision)
            forwards += len(runs) * rows
            per += len(runs) * rows * f
        return self.inference(model, forwards, per / forwards, forwards,
                              settings.get("batch_size", MatrixSettings.batch_size), precision)

    def capture(self, model: ModelEntry) -> Work:
        settings, runs = self.study.neurons, self.runs(model)
        precision = self.precision(model, settings)
        c = runs[0]
        if settings.get("protocol", CaptureSettings.protocol) == "prompt":
            per = example_flops(model.name, precision, c.prompt_length, 1, 1,
                                "classify").forward.total
            rows = len(runs)
        else:
            per = self._forward(model, c, self.spec.tasks_of(model)[0], precision)
            rows = len(runs) * settings.get("examples", CaptureSettings.examples)
        return self.inference(model, rows, per, rows,
                              settings.get("batch_size", CaptureSettings.batch_size), precision)

    def projector(self, target: ModelEntry) -> Work | None:
        settings = self.study.projection
        if settings.mode != "task":
            return None
        p = settings.projector
        c = self.runs(target)[0]
        config = TrainConfig(**{**c.to_dict(), "task": settings.train_tasks[0],
                                "steps": p.get("steps", ProjectorConfig.steps),
                                "eval_every": p.get("eval_every", ProjectorConfig.eval_every),
                                "eval_limit": p.get("eval_limit", ProjectorConfig.eval_limit)})
        return self.train_run(config, target)

    def projector_eval(self, target: ModelEntry) -> Work:
        settings = self.study.projection
        precision = precision_of(target.ds_settings)
        c = self.runs(target)[0]
        rows = settings.projector.get("eval_limit", ProjectorConfig.eval_limit) or DEFAULT_ROWS
        own = {get_task(t).name for t in self.spec.tasks_of(target)}
        per = [self._forward(target, c, t, precision) for t in settings.eval_tasks
               if get_task(t).name in own] or [0.0]
        forwards = PROJECTOR_PROMPTS * rows * len(per)
        return self.inference(target, forwards, sum(per) / len(per), forwards, 64, precision)

    def _forward(self, model: ModelEntry, config: TrainConfig, task: str,
                 precision: str) -> float:
        generates = get_task(task).kind == "generation"
        return example_flops(model.name, precision, config.prompt_length, config.max_length,
                             config.max_new_tokens if generates else CLASS_TARGET,
                             "generate" if generates else "classify").forward.total

    def tpt_runs(self, model: ModelEntry, pair: bool) -> int:
        tpt = self.study.tpt
        targets = {get_task(t).name for t in tpt.targets}
        own = {get_task(t).name for t in self.spec.tasks_of(model)}
        if pair:
            return len(targets & own)
        return len(targets & own) * len({get_task(t).name for t in tpt.sources} & own) * \
            len(self.spec.seeds)

    def compute_bound(self, model: ModelEntry, card: Card | None) -> bool:
        if card is None:
            return False
        c = self.runs(model)[0]
        ds, res = model.ds_settings, model.resources
        precision = precision_of(ds)
        micro = c.batch_size // (res.workers * int(ds.get("gradient_accumulation_steps", 1)))
        example = example_flops(c.model, precision, c.prompt_length, c.max_length, CLASS_TARGET)
        return fills_gpu(example, micro, card, precision)


def job_costs(study: Study, jobs: list[Job], cluster: Cluster) -> list[JobCost]:
    """Every job's estimate, in the given order."""
    costing = _Costing(study, cluster)
    chunked = {_subject(j.id) for j in jobs if j.id.endswith("]")}
    return [_job_cost(costing, job, chunked, jobs) for job in jobs]


def _job_cost(costing: _Costing, job: Job, chunked: set[str], jobs: list[Job]) -> JobCost:
    stage = stage_of(job.id)
    holds = dict(job.holds or job.resources)
    light = JobCost(job, stage, holds, None, None)
    model = _model_of(costing, job.id, stage)
    if model is None or stage in ("indicators", "correlate", "report"):
        return light
    subject = _subject(job.id)
    if subject in chunked and not job.id.endswith("]"):  # the assembly of a split matrix
        return light
    plan = stage in ("tpt", "tpt_model")
    runs_on = model.resources.group() if plan else holds
    card = costing.cluster.card_for(_resources_of(runs_on, model.resources))
    try:
        model_memory(model.name, precision_of(model.ds_settings))
        return _costed(costing, job, stage, model, holds, card, subject, jobs)
    except PtdistError:
        return JobCost(job, stage, holds, None, card, unknown=True)


def _costed(costing: _Costing, job: Job, stage: str, model: ModelEntry,
            holds: dict[str, float], card: Card | None, subject: str,
            jobs: list[Job]) -> JobCost:
    bound = costing.compute_bound(model, card)
    if stage == "prompt":
        runs = 1 + int(job.id.rsplit(" +", 1)[1]) if job.id.startswith("pack ") else 1
        return JobCost(job, stage, holds, costing.mean_run(model) * runs, card, runs=runs,
                       compute_bound=bound)
    if stage in ("matrix", "capture"):
        parts = sum(1 for j in jobs if _subject(j.id) == subject and j.id.endswith("]")) or 1
        work = costing.matrix(model) if stage == "matrix" else costing.capture(model)
        return JobCost(job, stage, holds, work * (1 / parts), card)
    if stage == "projector":
        return JobCost(job, stage, holds, costing.projector(model), card)
    if stage == "eval":
        return JobCost(job, stage, holds, costing.projector_eval(model), card)
    # A TPT plan: its runs hold the target model's resources, a job each (packing can only
    # shorten the schedule of a model that does not fill a GPU).
    pieces = costing.tpt_runs(model, pair=stage == "tpt_model")
    return JobCost(job, stage, model.resources.group(), costing.mean_run(model), card,
                   pieces=pieces, compute_bound=bound)


def _resources_of(holds: dict[str, float], model: Resources) -> Resources:
    """The resources the card of a job is looked up by: the model's, or none if the job holds
    no GPU."""
    return model if holds.get("GPU") else Resources()


def _subject(job_id: str) -> str:
    """A job id without its stage and chunk: ``matrix m [2/4]`` -> ``m``."""
    rest = job_id.split(" ", 1)[1] if " " in job_id else ""
    return rest.rsplit(" [", 1)[0] if rest.endswith("]") else rest


def _model_of(costing: _Costing, job_id: str, stage: str) -> ModelEntry | None:
    """The model a job computes with: a prompt job's (its first run's label starts with the
    model's name), a pair job's target, or the model a stage job names."""
    subject = _subject(job_id)
    if stage == "prompt":
        names = [m for m in costing.models if subject.startswith(m + "/")]
        return costing.models[max(names, key=len)] if names else None
    if " -> " in subject:
        subject = subject.split(" -> ", 1)[1]
    return costing.models.get(subject)


def stage_costs(costs: list[JobCost]) -> list[StageCost]:
    counts = Counter(c.stage for c in costs)
    to_run = Counter(c.stage for c in costs if not c.job.stored())
    hours = Counter()
    unknown = set()
    for c in costs:
        if c.unknown:
            unknown.add(c.stage)
        elif not c.job.stored():
            hours[c.stage] += c.gpu_hours
    return [StageCost(stage, counts[stage], to_run[stage],
                      None if stage in unknown else hours[stage])
            for stage in STAGES if counts[stage]]


def _hours(value: float) -> str:
    return f"{value:,.1f}" if value >= 0.05 or value == 0 else "<0.1"


def describe_costs(costs: list[StageCost]) -> str:
    lines = [f"{'stage':<12}{'jobs':>7}{'to run':>8}{'GPU-hours (est.)':>18}"]
    for c in costs:
        est = "unknown" if c.gpu_hours is None else _hours(c.gpu_hours)
        lines.append(f"{c.stage:<12}{c.jobs:>7}{c.to_run:>8}{est:>18}")
    known = [c.gpu_hours for c in costs if c.gpu_hours is not None]
    total = "unknown" if len(known) < len(costs) else _hours(sum(known))
    lines.append(f"{'total':<12}{sum(c.jobs for c in costs):>7}"
                 f"{sum(c.to_run for c in costs):>8}{total:>18}")
    lines.append(f"(estimate: the matmul FLOPs of each job's forwards and backwards, counted on "
                 f"the meta device (T5's decoder on its target steps, not on every encoder "
                 f"token), at {UTILISATION:.0%} of the dense peak of the GPU each job is "
                 "planned on (its datasheet's; fp32 runs at the FP32 peak), plus ZeRO-3's "
                 "weight gathers over the card's link; every GPU a job holds counted; the full "
                 "step budget of every run, no early stopping; docs/scale.md)")
    return "\n".join(lines)
