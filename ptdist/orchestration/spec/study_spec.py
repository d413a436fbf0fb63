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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveInt

from ptdist.errors import PtdistError
from ptdist.neurons.collect import CaptureSettings
from ptdist.orchestration.jobs.pairs import PairSettings
from ptdist.orchestration.spec.spec_presets import SpecFile, spec_file
from ptdist.orchestration.spec.sweep_spec import TOP_KEYS, Names, SweepSpec, spec_from_raw
from ptdist.projection.config import MODES, ProjectorConfig
from ptdist.tasks import get_task, task_ref
from ptdist.transfer.matrix import MatrixSettings
from ptdist.transfer.tpt import TOLERANCE
from ptdist.validation import Strict, as_written, dataclass_shape, located, read_yaml, validate

# Defaults as in transfer_matrix and capture: the settings pass on to them as written. A
# precision left out is the one each model's prompts were trained in.
Precision = Literal["bf16", "fp32"]
class _Transfer(Strict):
    eval_limit: PositiveInt | None = MatrixSettings.eval_limit
    batch_size: PositiveInt = MatrixSettings.batch_size
    precision: Precision | None = None


class _Neurons(Strict):
    protocol: Literal["prompt", "data"] = CaptureSettings.protocol
    examples: PositiveInt = CaptureSettings.examples
    batch_size: PositiveInt = CaptureSettings.batch_size
    precision: Precision | None = None


class _Pairs(Strict):
    mode: Literal[MODES] = "distance"
    train_tasks: Names | None = None
    eval_tasks: Names | None = None


# The pair settings, then the ProjectorConfig settings a study may set; models, prompts and
# resources come from the spec.
_Projection = dataclass_shape(ProjectorConfig, base=_Pairs, exclude=(
    "source_model", "target_model", "mode", "tasks", "source_prompts", "target_prompts",
    "ds_config", "data_dir"))


class _Tpt(Strict):
    targets: Names = Field(description="list the tasks TPT runs are tuned on")
    sources: Names | None = None
    tolerance: float = Field(TOLERANCE, gt=0, le=1, description="a fraction of vanilla PT's "
                             "best score, e.g. 0.99")


TransferSettings = as_written(_Transfer)
NeuronSettings = as_written(_Neurons)


class _Stages(Strict):
    transfer: TransferSettings | None = None
    neurons: NeuronSettings | None = None
    projection: _Projection | None = None
    tpt: _Tpt | None = None


class _StudyStages(Strict):
    """The stages under their own key, so that messages name the path from the file's top."""

    stages: _Stages | None = None


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
    tolerance: float = TOLERANCE  # the tolerance speed-up's fraction of vanilla's best


def load_study(source: str | os.PathLike | SpecFile, **overrides: Any) -> Study:
    """Read and validate a study (a file, or a preset by name); ``overrides`` as for
    `load_spec`."""
    source = spec_file(source, "study")
    path = source.path
    raw = read_yaml(path, "study", (*TOP_KEYS, "stages"))
    raw_stages = raw.pop("stages", None)
    spec = spec_from_raw(raw, source, "study", **overrides)
    with located(f"study {path}"):
        stages = validate(_StudyStages, {"stages": raw_stages}).stages or _Stages()
        tpt = _tpt(spec, stages.tpt, path.parent)
        if tpt is not None:  # TPT compares its targets' whole curves: their runs run to the end
            spec = replace(spec, full_curves=tuple(get_task(t).name for t in tpt.targets))
        return Study(spec, stages.transfer or {}, stages.neurons or {},
                     _projection(spec, stages, raw_stages or {}, path.parent), tpt)


def _tpt(spec: SweepSpec, tpt: _Tpt | None, base: Path) -> TptSettings | None:
    if tpt is None:
        return None
    settings = TptSettings(tuple(task_ref(t, base) for t in tpt.targets),
                           tuple(task_ref(t, base) for t in tpt.sources or ()), tpt.tolerance)
    known = {get_task(t).name for t in spec.tasks}
    outside = [t for t in settings.targets + settings.sources if get_task(t).name not in known]
    if outside:
        raise PtdistError(f"stages.tpt: {', '.join(outside)} not among the study's tasks")
    return settings


def _projection(spec: SweepSpec, stages: _Stages, raw: dict, base: Path) -> PairSettings | None:
    """``raw``: the stages as written, whose projector settings pass on to ProjectorConfig."""
    if len(spec.models) < 2 or ("projection" in stages.model_fields_set and
                                stages.projection is None):
        return None
    pairs = stages.projection or _Projection()
    # Task files are relative to the study, as in its 'tasks'.
    settings = PairSettings(mode=pairs.mode,
                            train_tasks=tuple(task_ref(t, base) for t in
                                              pairs.train_tasks or spec.tasks),
                            eval_tasks=tuple(task_ref(t, base) for t in
                                             pairs.eval_tasks or spec.tasks),
                            projector={k: v for k, v in (raw.get("projection") or {}).items()
                                       if k not in _Pairs.model_fields})
    return settings
