"""What each model of a spec holds while a run of it trains, whether that fits, and how runs are
packed: the spec's placement (GPUs, workers, ZeRO stage, accumulation, activation checkpointing),
its memory per GPU from the planner (`ptdist.training.memory`), the card it lands on (the smallest
GPU of the cluster's node types that can hold it: `Cluster.card_for`), and the placement of least
compute that fits that card (`placement.py`). Shown by the dry runs of `ptdist sweep` and `ptdist
replicate`, and enforced by both before anything is scheduled (`check_plans`); no model weights are
read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ptdist.distributed.ds_config import load_ds_config, precision_of, zero_stage
from ptdist.errors import PtdistError
from ptdist.orchestration.planning.cost_model import example_flops, fills_gpu
from ptdist.orchestration.planning.placement import Placement, fits, plan_placement
from ptdist.orchestration.planning.resources import Cluster, describe
from ptdist.orchestration.spec.sweep_spec import ModelEntry, RunSpec, SweepSpec
from ptdist.tasks import get_task
from ptdist.training.config import TrainConfig
from ptdist.training.hardware import GB, Card
from ptdist.training.memory import USABLE, Memory, RunShape, model_memory, size

CLASS_TARGET = 4  # decoder tokens of a label word and </s>, with room for a multi-piece word
# The most runs automatic packing puts in one job: the largest pack measured at the big-batch
# bound (benchmarks/RESULTS.md, "Packing at the big-batch bound").
AUTO_PACK = 16
IGNORE_FLAG = "--ignore-memory-plan"


@dataclass(frozen=True)
class ModelPlan:
    model: str
    holds: dict[str, float]  # every resource a run holds (all its workers), on one node
    workers: int
    zero_stage: int
    precision: str
    checkpointing: bool
    accumulation: int
    micro_batch: int  # examples per GPU (per process) per micro-step
    card: Card | None  # the GPU a run is planned on; None: it holds none
    memory: Memory | None  # per GPU (per process on CPU); None: the model's config is unknown
    best: Placement | None  # None: unknown, no GPU, or no placement of up to 8 GPUs fits
    note: str = ""  # why the memory is unknown

    @property
    def fits(self) -> bool | None:
        if self.memory is None or self.card is None:
            return None
        return fits(self.memory, self.card)


def run_shape(config: TrainConfig, precision: str, micro_batch: int,
              tasks: tuple[str, ...]) -> RunShape:
    """What a run's memory depends on; generation tasks decode up to ``max_new_tokens``."""
    generates = any(get_task(t).kind == "generation" for t in tasks)
    return RunShape(precision, micro_batch, config.prompt_length, config.max_length,
                    config.max_new_tokens if generates else CLASS_TARGET)


def model_plans(spec: SweepSpec, cluster: Cluster) -> list[ModelPlan]:
    return [_plan(spec, model, cluster) for model in spec.models]


def _plan(spec: SweepSpec, model: ModelEntry, cluster: Cluster) -> ModelPlan:
    config = next(r.config for r in spec.runs() if r.config.model == model.name)
    res, ds = model.resources, model.ds_settings
    precision, stage = precision_of(ds), zero_stage(ds)
    accum = int(ds.get("gradient_accumulation_steps", 1))
    micro = config.batch_size // (res.workers * accum)
    shape = run_shape(config, precision, micro, spec.tasks_of(model))
    card = cluster.card_for(res)
    base = dict(model=model.name, holds=res.group(), workers=res.workers, zero_stage=stage,
                precision=precision, checkpointing=config.activation_checkpointing,
                accumulation=accum, micro_batch=micro, card=card)
    try:
        memory = model_memory(model.name, precision)
    except PtdistError as exc:
        return ModelPlan(**base, memory=None, best=None, note=str(exc).split(";")[0])
    need = memory.estimate(shape, res.workers, stage, config.activation_checkpointing)
    best = plan_placement(memory, shape, config.batch_size, card) if card else None
    return ModelPlan(**base, memory=need, best=best)


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
               + (f", accumulation {p.accumulation} at micro-batch {p.micro_batch}"
                  if p.accumulation > 1 else "")
               + (", activation checkpointing" if p.checkpointing else ""))
        lines.append(f"  {p.model}: {how}")
        if p.memory is None:
            lines.append(f"    memory unknown: {p.note}")
            continue
        if p.card is None:
            lines.append(f"    {p.memory.describe()} per process (no GPU)")
            continue
        fits_word = "fits" if p.fits else "DOES NOT FIT"
        lines.append(f"    {p.memory.describe()} per GPU: {fits_word} one {_card(p.card)}")
        lines.append("    least-compute placement on that card: " +
                     (f"{p.best.describe()} ({size(p.best.memory.total)})"
                      if p.best else "none of up to 8 GPUs"))
    return "\n".join(lines)


def _card(card: Card) -> str:
    return f"{card.name} ({USABLE * card.memory_gb:g} GB usable)"


def check_plans(plans: list[ModelPlan], ignore_memory_plan: bool = False) -> None:
    """Refuse, before anything is scheduled, a model whose runs do not fit the GPU they are
    planned on, with the plan's numbers and the placement that would fit; ``IGNORE_FLAG``
    (``ignore_memory_plan``) launches them anyway, for those who know better."""
    for p in plans:
        if p.fits is not False or ignore_memory_plan:
            continue
        fix = (f"the least-compute placement that fits is {p.best.describe()} "
               f"({size(p.best.memory.total)} per GPU): set it in the spec (resources, a "
               "ds_config's gradient_accumulation_steps, train.activation_checkpointing)"
               if p.best else
               "no placement of up to 8 GPUs of it fits: pin the model to a larger GPU "
               "(resources.accelerator_type / gpu_memory_gb)")
        raise PtdistError(
            f"model {p.model} does not fit its GPU: a run needs {p.memory.describe()} per GPU, "
            f"one {_card(p.card)} holds {size(USABLE * p.card.memory_gb * GB)}; {fix} "
            f"(docs/scale.md), or pass {IGNORE_FLAG} to launch it anyway")


def check_spec(spec: SweepSpec, cluster: Cluster, local: bool = False,
               ignore_memory_plan: bool = False) -> list[ModelPlan]:
    """What the dry run and the scheduler both check before anything runs: every run's job fits
    a node of ``cluster`` (not for ``local`` jobs, which run in this process whatever they
    ask), and its memory plan fits the GPU it lands on (`check_plans`). Returns the plans."""
    if not local:
        cluster.check(spec.runs())
    plans = model_plans(spec, cluster)
    check_plans(plans, ignore_memory_plan)
    return plans


@dataclass(frozen=True)
class Packing:
    """How many runs automatic packing puts in one job (a spec's ``pack: auto``): as many as keep
    every slot of the cluster that could run them busy (the runs of a group spread over the jobs of
    its resources the cluster holds at once, at most ``max_concurrent``; one slot when the jobs run
    one at a time, ``serial``), at most `AUTO_PACK`, only as many as the memory planner fits on the
    card, and none for a model whose run fills a GPU by itself (`cost_model.fills_gpu`): packing
    such runs saves only the model load and makes them share one GPU's compute."""

    cluster: Cluster
    max_concurrent: int | None = None
    serial: bool = False

    def slots(self, run: RunSpec) -> int:
        if self.serial:
            return 1
        held = self.cluster.slots(run.resources.group())
        return max(1, min(held, self.max_concurrent or held))

    def __call__(self, run: RunSpec, runs: int) -> int:
        card = self.cluster.card_for(run.resources)
        if card is not None and compute_bound(run, card):
            return 1
        k = min(AUTO_PACK, math.ceil(runs / self.slots(run)))
        while k > 1 and not pack_fits(run, k, card):
            k -= 1
        return k


def _micro_batch(run: RunSpec) -> tuple[str, int, int]:
    """A run's precision, ZeRO stage (a pack runs ZeRO-1/2 as 0: `frozen_engine_config`) and
    micro-batch per process."""
    ds, _ = load_ds_config(run.config.ds_config)
    accum = int(ds.get("gradient_accumulation_steps", 1))
    return (precision_of(ds), 3 if zero_stage(ds) == 3 else 0,
            run.config.batch_size // (run.resources.workers * accum))


def compute_bound(run: RunSpec, card: Card) -> bool:
    """Whether one run keeps ``card`` busy by itself (a model whose config cannot be read: it
    cannot be planned, so it is not packed either)."""
    precision, _, micro = _micro_batch(run)
    c = run.config
    try:
        flops = example_flops(c.model, precision, c.prompt_length, c.max_length, CLASS_TARGET)
    except PtdistError:
        return True
    return fills_gpu(flops, micro, card, precision)


def pack_fits(run: RunSpec, k: int, card: Card | None) -> bool:
    """Whether a pack of ``k`` runs like ``run`` fits its GPU per the planner: one run's
    micro-batch in a forward (a pack runs its runs' forwards one after another), and ``k``
    prompts' optimizer state. A run without a GPU (``card`` None): yes (host memory is not
    planned); a model whose config cannot be read: no, since it cannot be planned."""
    if card is None:
        return True
    precision, stage, micro = _micro_batch(run)
    config, res = run.config, run.resources
    try:
        memory = model_memory(config.model, precision)
    except PtdistError:
        return False
    need = memory.estimate(run_shape(config, precision, micro, (config.task,)), res.workers,
                           stage, config.activation_checkpointing)
    return need.total + (k - 1) * need.optimizer <= USABLE * card.memory_gb * GB
