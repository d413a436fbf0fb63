"""A study (YAML): a sweep spec (docs/sweeps.md) plus the settings of the stages that follow
prompt tuning. Format and examples: docs/replicate.md.

    stages:
      transfer:   {eval_limit: 500, batch_size: 64}
      neurons:    {protocol: prompt, examples: 32}
      projection: {mode: distance, train_tasks: [sst2], eval_tasks: [...], variant: flat, ...}

A stage left out of ``stages`` runs with its defaults; ``projection: null`` (or a study with
one model) skips cross-model transfer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ptdist.errors import PtdistError
from ptdist.orchestration.pairs import PairSettings
from ptdist.orchestration.spec import (TOP_KEYS, SweepSpec, check_keys, read_yaml,
                                       spec_from_raw, task_ref)
from ptdist.projection.config import ProjectorConfig
from ptdist.tasks import get_task

# specs/ sits at the repository root, like ds_configs/ (see training/config.py).
PRESET_DIRS = (Path(__file__).resolve().parents[2] / "specs", Path("specs"))
STAGE_KEYS = ("transfer", "neurons", "projection", "tpt")
TPT_KEYS = ("targets", "sources")
TRANSFER_KEYS = ("eval_limit", "batch_size")
NEURON_KEYS = ("protocol", "examples", "batch_size")
# ProjectorConfig settings a study may set; models, prompts and resources come from the spec.
PROJECTOR_KEYS = tuple(f.name for f in fields(ProjectorConfig) if f.name not in (
    "source_model", "target_model", "mode", "tasks", "source_prompts", "target_prompts",
    "ds_config", "data_dir"))
PROJECTION_KEYS = ("mode", "train_tasks", "eval_tasks", *PROJECTOR_KEYS)


@dataclass(frozen=True)
class Study:
    spec: SweepSpec
    transfer: dict[str, Any]
    neurons: dict[str, Any]
    projection: PairSettings | None  # None: no cross-model stage
    tpt: TptSettings | None  # None: no TPT runs


@dataclass(frozen=True)
class TptSettings:
    """TPT_task on each model: every target task initialised from each source task's prompt;
    TPT_model on each projector pair: every target from its projected prompt."""

    targets: tuple[str, ...]
    sources: tuple[str, ...]


def load_study(path: str | os.PathLike, **overrides: Any) -> Study:
    """Read and validate a study; ``overrides`` as for `load_spec`."""
    path = Path(path)
    raw = read_yaml(path, "study", (*TOP_KEYS, "stages"))
    stages = raw.pop("stages", None) or {}
    spec = spec_from_raw(raw, path, "study", **overrides)
    try:
        return _study(spec, stages, path.parent)
    except PtdistError as exc:
        raise PtdistError(f"study {path}: {exc}") from None


def preset_path(name: str) -> Path:
    """The study file of a preset (``specs/<name>.yaml``)."""
    found = [d / f"{name}.yaml" for d in PRESET_DIRS]
    path = next((p for p in found if p.exists()), None)
    if path is None:
        names = sorted({p.stem for d in PRESET_DIRS for p in d.glob("*.yaml")})
        raise PtdistError(f"unknown preset '{name}'; presets: {', '.join(names)} (or give "
                          "--study FILE)")
    return path


def _study(spec: SweepSpec, stages: dict, base: Path) -> Study:
    check_keys(stages, STAGE_KEYS, "stages")
    transfer = dict(stages.get("transfer") or {})
    check_keys(transfer, TRANSFER_KEYS, "stages.transfer")
    neurons = dict(stages.get("neurons") or {})
    check_keys(neurons, NEURON_KEYS, "stages.neurons")
    if neurons.get("protocol", "prompt") not in ("prompt", "data"):
        raise PtdistError(f"stages.neurons.protocol must be prompt or data "
                          f"(got {neurons['protocol']!r})")
    return Study(spec, transfer, neurons, _projection(spec, stages, base),
                 _tpt(spec, stages, base))


def _tpt(spec: SweepSpec, stages: dict, base: Path) -> TptSettings | None:
    raw = stages.get("tpt")
    if raw is None:
        return None
    check_keys(raw, TPT_KEYS, "stages.tpt")
    if not raw.get("targets"):
        raise PtdistError("stages.tpt needs 'targets' (the tasks TPT runs are tuned on)")
    settings = TptSettings(tuple(task_ref(t, base) for t in raw["targets"]),
                           tuple(task_ref(t, base) for t in raw.get("sources") or ()))
    known = {get_task(t).name for t in spec.tasks}
    outside = [t for t in settings.targets + settings.sources if get_task(t).name not in known]
    if outside:
        raise PtdistError(f"stages.tpt: {', '.join(outside)} not among the study's tasks")
    return settings


def _projection(spec: SweepSpec, stages: dict, base: Path) -> PairSettings | None:
    if len(spec.models) < 2 or ("projection" in stages and stages["projection"] is None):
        return None
    raw = dict(stages.get("projection") or {})
    check_keys(raw, PROJECTION_KEYS, "stages.projection")
    # Task files are relative to the study, as in its 'tasks'.
    settings = PairSettings(mode=raw.pop("mode", "distance"),
                            train_tasks=tuple(task_ref(t, base) for t in
                                              raw.pop("train_tasks", spec.tasks)),
                            eval_tasks=tuple(task_ref(t, base) for t in
                                             raw.pop("eval_tasks", spec.tasks)),
                            projector=raw)
    if settings.mode == "task" and len(settings.train_tasks) != 1:
        raise PtdistError("stages.projection: task tuning trains on one task; set train_tasks "
                          "to one of the study's tasks, or use mode: distance")
    return settings
