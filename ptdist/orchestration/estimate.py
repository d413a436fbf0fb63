"""What a study will cost before it runs: its jobs per stage and a GPU-hours estimate.

The estimate counts the FLOPs of the forward and backward passes through each frozen model
(a frozen model still back-propagates to its input, so a training token costs about 4 x
parameters FLOPs, an evaluation token 2 x parameters; activation checkpointing adds a forward,
6 x) and divides by a stated throughput of the GPU a run lands on (its ``accelerator_type``,
else an A100). A run on several GPUs (ZeRO-3 across a node) holds them all for its whole time,
and spends part of it communicating: its GPU-hours are its FLOPs at `ZERO3_EFFICIENCY` of the
throughput. It is an order of magnitude to plan a budget with, not a measurement: early
stopping makes runs shorter, small batches make them slower.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ptdist.orchestration.costs import stage_of
from ptdist.errors import PtdistError
from ptdist.orchestration.graph import Job
from ptdist.orchestration.spec import ModelEntry
from ptdist.orchestration.study import Study
from ptdist.projection.config import ProjectorConfig
from ptdist.training.config import TrainConfig
from ptdist.transfer.matrix import MatrixSettings
from ptdist.training.memory import DEFAULT_GPU, model_memory

# Dense bf16 tensor-core peaks (TF32 for fp32 is half of it) by Ray's accelerator type.
PEAK_BF16 = {"A100": 312e12, "A100-40G": 312e12, "A100-80G": 312e12, "H100": 989e12,
             "H200": 989e12, "L40S": 362e12, "L4": 121e12, "A10G": 125e12}
UTILISATION = 0.3
ZERO3_EFFICIENCY = 0.7  # assumed: ZeRO-3 gathers every layer's weights at every step
STAGES = ("prompt", "matrix", "capture", "indicators", "correlate", "projector", "eval",
          "tpt", "tpt_model", "report")


@dataclass(frozen=True)
class StageCost:
    stage: str
    jobs: int
    to_run: int
    gpu_hours: float | None  # None: a model's size is unknown


def parameters(model: str) -> float | None:
    """A model's parameter count from its config on the meta device (the paper's hub models
    are planned from configs ptdist ships); None when no config is reachable."""
    try:
        return float(model_memory(model, "bf16").parameters)
    except PtdistError:
        return None


def study_costs(study: Study, jobs: list[Job]) -> list[StageCost]:
    spec = study.spec
    sizes = {m.name: parameters(m.name) for m in spec.models}
    counts = Counter(stage_of(job.id) for job in jobs)
    to_run = Counter(stage_of(job.id) for job in jobs if not job.stored())
    hours = {stage: 0.0 for stage in STAGES}
    unknown = set()
    for model in spec.models:
        n = sizes[model.name]
        if n is None:
            unknown.add(model.name)
            continue
        runs = [r.config for r in spec.runs() if r.config.model == model.name]
        hours["prompt"] += sum(_train_flops(c, n) for c in runs) / _train_rate(model) / 3600
        if runs:
            c, tasks = runs[0], len(spec.tasks_of(model))
            eval_rows = study.transfer.get("eval_limit", MatrixSettings.eval_limit) or 1000
            hours["matrix"] += 2 * n * tasks * tasks * eval_rows * _tokens(c) / _rate(model) \
                / 3600
            hours["capture"] += 2 * n * len(runs) * c.prompt_length / _rate(model) / 3600
    hours.update(_projection_hours(study, sizes))
    hours.update(_tpt_hours(study, sizes))
    return [StageCost(stage, counts[stage], to_run[stage],
                      None if unknown and stage not in ("indicators", "correlate", "report")
                      else hours[stage])
            for stage in STAGES if counts[stage]]


def _projection_hours(study: Study, sizes: dict[str, float | None]) -> dict[str, float]:
    """Task tuning runs through the target like prompt tuning; evaluation scores three prompts
    per shared task; distance minimising involves no model and is not counted."""
    if study.projection is None:
        return {}
    spec, settings = study.spec, study.projection
    hours = {"projector": 0.0, "eval": 0.0}
    for target in spec.models:
        n = sizes[target.name]
        if n is None:
            continue
        runs = [r.config for r in spec.runs() if r.config.model == target.name]
        sources = len(spec.models) - 1
        steps = settings.projector.get("steps", ProjectorConfig.steps)
        if settings.mode == "task":
            hours["projector"] += sources * 4 * n * steps * runs[0].batch_size * \
                _tokens(runs[0]) / _train_rate(target) / 3600
        rows = settings.projector.get("eval_limit", ProjectorConfig.eval_limit) or 1000
        hours["eval"] += sources * 3 * len(settings.eval_tasks) * 2 * n * rows * \
            _tokens(runs[0]) / _rate(target) / 3600
    return hours


def _tpt_hours(study: Study, sizes: dict[str, float | None]) -> dict[str, float]:
    """A TPT run costs what a prompt-tuning run of its target costs (vanilla PT is the
    study's own run): sources x targets x seeds runs per model, and the targets per
    projector (one seed)."""
    if study.tpt is None:
        return {}
    spec = study.spec
    hours = {"tpt": 0.0, "tpt_model": 0.0}
    pairs = len(spec.models) - 1 if study.projection is not None else 0
    for model in spec.models:
        n = sizes[model.name]
        runs = [r.config for r in spec.runs() if r.config.model == model.name]
        if n is None or not runs:
            continue
        one = _train_flops(runs[0], n) / _train_rate(model) / 3600
        hours["tpt"] += one * len(study.tpt.targets) * len(study.tpt.sources) * len(spec.seeds)
        hours["tpt_model"] += one * len(study.tpt.targets) * pairs
    return hours


def _train_flops(config: TrainConfig, n: float) -> float:
    evals = config.steps // config.eval_every + 1  # and the starting prompt's, at step 0
    per_token = 6 if config.activation_checkpointing else 4
    return per_token * n * config.steps * config.batch_size * _tokens(config) + \
        2 * n * evals * (config.eval_limit or 1000) * _tokens(config)


def _tokens(config: TrainConfig) -> int:
    return config.prompt_length + config.max_length


def _rate(model: ModelEntry) -> float:
    """FLOP/s of one GPU of the model's runs (evaluation jobs hold one GPU)."""
    peak = PEAK_BF16.get(model.resources.accelerator_type or DEFAULT_GPU, PEAK_BF16[DEFAULT_GPU])
    bf16 = model.ds_settings.get("bf16", {}).get("enabled")
    return peak * (1 if bf16 else 0.5) * UTILISATION


def _train_rate(model: ModelEntry) -> float:
    """FLOP/s per GPU-hour of a training run: a run on several GPUs spends part of its time
    communicating, on every GPU it holds."""
    return _rate(model) * (ZERO3_EFFICIENCY if model.resources.gpus > 1 else 1.0)


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
    lines.append(f"(estimate: 4 x parameters FLOPs per training token (6 x with activation "
                 f"checkpointing), 2 x per evaluation token, at {UTILISATION:.0%} of the bf16 "
                 f"peak of each model's GPU (an A100's {PEAK_BF16[DEFAULT_GPU] / 1e12:.0f} "
                 f"TFLOP/s unless pinned; half for fp32), {ZERO3_EFFICIENCY:.0%} of it for a "
                 "run on several GPUs, each GPU held counted; the full step budget of every "
                 "run, no early stopping)")
    return "\n".join(lines)
