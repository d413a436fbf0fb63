"""What a study will cost before it runs: its jobs per stage and a GPU-hours estimate.

The estimate counts the FLOPs of the forward and backward passes through each frozen model
(a frozen model still back-propagates to its input, so a training token costs about 4 x
parameters FLOPs, an evaluation token 2 x parameters) and divides by a stated throughput.
It is an order of magnitude to plan a budget with, not a measurement: early stopping makes
runs shorter, small batches and ZeRO-3 communication make them slower.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

from ptdist.orchestration.graph import Job
from ptdist.orchestration.spec import ModelEntry
from ptdist.orchestration.study import Study
from ptdist.training.config import TrainConfig

PEAK_FLOPS = {"bf16": 312e12, "fp32": 156e12}  # A100 (cluster.yaml's p4de): bf16; TF32
UTILISATION = 0.3
# Parameter counts of hub models a planning machine may not have (the dry-run needs no hub).
KNOWN_PARAMETERS = {
    "roberta-base": 125e6, "roberta-large": 355e6, "bert-base-uncased": 110e6,
    "bert-large-uncased": 336e6, "t5-small": 60e6, "t5-base": 223e6, "t5-large": 738e6,
    "t5-3b": 2.85e9, "t5-11b": 11.3e9, "google/t5-v1_1-base": 248e6,
    "google/t5-v1_1-large": 783e6, "google/t5-v1_1-xl": 2.85e9, "google/t5-v1_1-xxl": 11.1e9,
}
STAGES = ("prompt", "matrix", "capture", "indicators", "correlate", "projector", "eval",
          "tpt", "tpt_model", "report")


@dataclass(frozen=True)
class StageCost:
    stage: str
    jobs: int
    to_run: int
    gpu_hours: float | None  # None: a model's size is unknown


def parameters(model: str) -> float | None:
    """A model's parameter count: from the table above, else from its config (a local folder,
    preset or package path), without loading weights; None when neither is available."""
    if model in KNOWN_PARAMETERS:
        return KNOWN_PARAMETERS[model]
    try:
        import torch
        from transformers import AutoConfig, AutoModel

        from ptdist.backbones import resolve_model_path

        path = resolve_model_path(model)
        if not os.path.isdir(path):
            return None
        with torch.device("meta"):
            built = AutoModel.from_config(AutoConfig.from_pretrained(path))
        return float(sum(p.numel() for p in built.parameters()))
    except (OSError, ValueError, ImportError):
        return None


def study_costs(study: Study, jobs: list[Job]) -> list[StageCost]:
    spec = study.spec
    sizes = {m.name: parameters(m.name) for m in spec.models}
    counts = Counter(_stage_of(job.id) for job in jobs)
    to_run = Counter(_stage_of(job.id) for job in jobs if not job.stored())
    hours = {stage: 0.0 for stage in STAGES}
    unknown = set()
    for model in spec.models:
        n = sizes[model.name]
        if n is None:
            unknown.add(model.name)
            continue
        runs = [r.config for r in spec.runs() if r.config.model == model.name]
        hours["prompt"] += sum(_train_flops(c, n) for c in runs) / _rate(model) / 3600
        if runs:
            c, tasks = runs[0], len(spec.tasks_of(model))
            eval_rows = study.transfer.get("eval_limit", 1000) or 1000
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
        steps = settings.projector.get("steps", 1000)
        if settings.mode == "task":
            hours["projector"] += sources * 4 * n * steps * runs[0].batch_size * \
                _tokens(runs[0]) / _rate(target) / 3600
        rows = settings.projector.get("eval_limit", 1000) or 1000
        hours["eval"] += sources * 3 * len(settings.eval_tasks) * 2 * n * rows * \
            _tokens(runs[0]) / _rate(target) / 3600
    return hours


def _tpt_hours(study: Study, sizes: dict[str, float | None]) -> dict[str, float]:
    """A TPT run costs what a prompt-tuning run of its target costs (vanilla PT is the
    study's own run): sources x targets runs per model, and the targets per projector."""
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
        one = _train_flops(runs[0], n) / _rate(model) / 3600
        hours["tpt"] += one * len(study.tpt.targets) * len(study.tpt.sources)
        hours["tpt_model"] += one * len(study.tpt.targets) * pairs
    return hours


def _train_flops(config: TrainConfig, n: float) -> float:
    evals = config.steps // config.eval_every + 1  # and the starting prompt's, at step 0
    return 4 * n * config.steps * config.batch_size * _tokens(config) + \
        2 * n * evals * (config.eval_limit or 1000) * _tokens(config)


def _tokens(config: TrainConfig) -> int:
    return config.prompt_length + config.max_length


def _rate(model: ModelEntry) -> float:
    bf16 = model.ds_settings.get("bf16", {}).get("enabled")
    return PEAK_FLOPS["bf16" if bf16 else "fp32"] * UTILISATION


def _stage_of(job_id: str) -> str:
    stage = job_id.split(" ", 1)[0]
    return "prompt" if stage == "pack" else stage


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
    lines.append(f"(estimate: 4 x parameters FLOPs per training token, 2 x per evaluation "
                 f"token, at {UTILISATION:.0%} of an A100's {PEAK_FLOPS['bf16'] / 1e12:.0f} "
                 f"TFLOP/s bf16 or {PEAK_FLOPS['fp32'] / 1e12:.0f} TF32; the full step "
                 "budget of every run, no early stopping)")
    return "\n".join(lines)
