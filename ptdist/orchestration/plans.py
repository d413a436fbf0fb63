"""What each model of a spec holds while a run of it trains, and whether that fits: the
spec's placement (GPUs, workers, ZeRO stage, activation checkpointing), its memory per GPU from
the planner (`ptdist.training.memory`), the card it lands on (its ``accelerator_type``, else
`DEFAULT_GPU`), and the cheapest placement the planner would pick. Shown by the dry runs of
`ptdist sweep` and `ptdist replicate`; no model weights are read.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptdist.errors import PtdistError
from ptdist.orchestration.resources import describe
from ptdist.orchestration.spec import ModelEntry, RunSpec, SweepSpec
from ptdist.tasks import get_task
from ptdist.training.config import TrainConfig
from ptdist.training.engine import load_ds_config, precision_of, zero_stage
from ptdist.training.memory import (DEFAULT_GPU, GB, USABLE, Memory, Placement, RunShape,
                                    gpu_memory_gb, model_memory, plan_placement, size)

CLASS_TARGET = 4  # decoder tokens of a label word and </s>, with room for a multi-piece word


@dataclass(frozen=True)
class ModelPlan:
    model: str
    holds: dict[str, float]  # every resource a run holds (all its workers), on one node
    workers: int
    zero_stage: int
    precision: str
    checkpointing: bool
    gpu: str  # the card a run lands on
    memory: Memory | None  # per GPU (per process on CPU); None: the model's config is unknown
    cheapest: Placement | None  # None: unknown, or no placement of up to 8 GPUs fits
    note: str = ""  # why the memory is unknown

    @property
    def fits(self) -> bool | None:
        if self.memory is None or not self.holds.get("GPU"):
            return None
        return self.memory.total <= USABLE * gpu_memory_gb(self.gpu) * GB


def run_shape(config: TrainConfig, precision: str, micro_batch: int,
              tasks: tuple[str, ...]) -> RunShape:
    """What a run's memory depends on; generation tasks decode up to ``max_new_tokens``."""
    generates = any(get_task(t).kind == "generation" for t in tasks)
    return RunShape(precision, micro_batch, config.prompt_length, config.max_length,
                    config.max_new_tokens if generates else CLASS_TARGET)


def model_plans(spec: SweepSpec) -> list[ModelPlan]:
    return [_plan(spec, model) for model in spec.models]


def _plan(spec: SweepSpec, model: ModelEntry) -> ModelPlan:
    config = next(r.config for r in spec.runs() if r.config.model == model.name)
    res, ds = model.resources, model.ds_settings
    precision, stage = precision_of(ds), zero_stage(ds)
    accum = int(ds.get("gradient_accumulation_steps", 1))
    shape = run_shape(config, precision, config.batch_size // (res.workers * accum),
                      spec.tasks_of(model))
    gpu = res.accelerator_type or DEFAULT_GPU
    base = dict(model=model.name, holds=res.group(), workers=res.workers, zero_stage=stage,
                precision=precision, checkpointing=config.activation_checkpointing, gpu=gpu)
    try:
        memory = model_memory(model.name, precision)
    except PtdistError as exc:
        return ModelPlan(**base, memory=None, cheapest=None, note=str(exc).split(";")[0])
    need = memory.estimate(shape, res.workers, stage, config.activation_checkpointing)
    cheapest = plan_placement(memory, shape, config.batch_size // accum, gpu_memory_gb(gpu))
    return ModelPlan(**base, memory=need, cheapest=cheapest)


def describe_training(spec: SweepSpec) -> str:
    """The dry run's training section: each model's budget, learning-rate schedule and
    optimizer (the settings of its runs; seeds, tasks and inits apart)."""
    lines = ["training (per model):"]
    for model in spec.models:
        c = next(r.config for r in spec.runs() if r.config.model == model.name)
        rate = "constant rate" if c.schedule == "constant" else "linear decay to 0"
        lines.append(f"  {model.name}: {c.steps} steps of batch {c.batch_size} at lr {c.lr:g}, "
                     f"{c.warmup} warm-up step(s) then {rate}, {c.optimizer} (weight decay "
                     f"{c.weight_decay:g}), prompt length {c.prompt_length}")
    return "\n".join(lines)


def describe_plans(plans: list[ModelPlan]) -> str:
    """The dry run's memory section: one block per model."""
    lines = ["memory plan (the model's config on the meta device, no weights; "
             "docs/scale.md):"]
    for p in plans:
        how = (f"{p.workers} worker(s) on one node holding {describe(p.holds)}, "
               f"ZeRO-{p.zero_stage}, {p.precision}"
               + (", activation checkpointing" if p.checkpointing else ""))
        lines.append(f"  {p.model}: {how}")
        if p.memory is None:
            lines.append(f"    memory unknown: {p.note}")
            continue
        if p.fits is None:
            lines.append(f"    {p.memory.describe()} per process (no GPU)")
            continue
        fits = "fits" if p.fits else "DOES NOT FIT"
        lines.append(f"    {p.memory.describe()} per GPU: {fits} one {p.gpu} "
                     f"({gpu_memory_gb(p.gpu):g} GB)")
        lines.append("    cheapest placement on that card: " +
                     (f"{p.cheapest.describe()} ({size(p.cheapest.memory.total)})"
                      if p.cheapest else "none of up to 8 GPUs"))
    return "\n".join(lines)


def pack_fits(run: RunSpec, k: int) -> bool:
    """Whether a pack of ``k`` runs like ``run`` fits its GPU per the planner: one run's
    micro-batch in a forward (a pack runs its runs' forwards one after another), and ``k``
    prompts' optimizer state (a pack runs ZeRO-1/2 as stage 0: `frozen_engine_config`). A run
    without a GPU: yes (host memory is not planned); a model whose config cannot be read: no,
    since it cannot be planned."""
    res, config = run.resources, run.config
    if not res.gpus:
        return True
    ds, _ = load_ds_config(config.ds_config)
    precision, stage = precision_of(ds), 3 if zero_stage(ds) == 3 else 0
    micro = config.batch_size // (res.workers * int(ds.get("gradient_accumulation_steps", 1)))
    try:
        memory = model_memory(config.model, precision)
    except PtdistError:
        return False
    need = memory.estimate(run_shape(config, precision, micro, (config.task,)), res.workers,
                           stage, config.activation_checkpointing)
    total = need.total + (k - 1) * need.optimizer
    return total <= USABLE * gpu_memory_gb(res.accelerator_type) * GB
