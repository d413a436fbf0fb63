"""How to run a prompt-tuning run on a card: the way of least compute that fits its memory.

The planner tries every way to split a global batch over GPUs of one node and micro-steps — 1, 2, 4
or 8 GPUs (one: ZeRO-0; several: ZeRO-3, the frozen weights partitioned over them), gradient
accumulation over 1, 2, 4... micro-batches, activation checkpointing or not — and keeps the one
whose step costs the fewest GPU-seconds by the cost model (`cost_model.step_time`, times the GPUs
held) among those whose memory plan (`ptdist.training.memory`) fits. So accumulation, which costs
nothing but smaller micro-batches, comes before checkpointing, which runs every forward twice (+50 %
compute: a training example is a forward F and a backward to the prompt B ~ F, and checkpointing
adds F again: (3F) / (2F) = 1.5), and one GPU before several, which communicate. Ties go to fewer
GPUs, then fewer micro-steps, then no checkpointing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ptdist.orchestration.planning.cost_model import StepTime, example_flops, step_time
from ptdist.training.hardware import GB, Card
from ptdist.training.memory import USABLE, Memory, ModelMemory, RunShape

GPU_COUNTS = (1, 2, 4, 8)


@dataclass(frozen=True)
class Placement:
    gpus: int
    zero_stage: int
    accumulation: int  # micro-steps per optimizer step
    micro_batch: int  # examples per GPU per micro-step
    checkpointing: bool
    memory: Memory
    step: StepTime  # on each GPU

    @property
    def gpu_seconds(self) -> float:
        """What one optimizer step costs: its time on every GPU it holds."""
        return self.gpus * self.step.total

    def describe(self) -> str:
        how = "1 GPU, ZeRO-0" if self.gpus == 1 else f"{self.gpus} GPUs of one node, ZeRO-3"
        if self.accumulation > 1:
            how += f", accumulation {self.accumulation} at micro-batch {self.micro_batch}"
        return how + (", activation checkpointing" if self.checkpointing else "")


def fits(memory: Memory, card: Card) -> bool:
    return memory.total <= USABLE * card.memory_gb * GB


def plan_placement(memory: ModelMemory, run: RunShape, batch_size: int, card: Card,
                   max_gpus: int = 8) -> Placement | None:
    """The placement of least compute that fits ``card`` for a run of global batch
    ``batch_size`` (``run.micro_batch`` is ignored: the planner chooses it); None if none of
    up to ``max_gpus`` GPUs does."""
    flops = example_flops(memory.model, memory.precision, run.prompt_length, run.text_length,
                          run.target_length)
    candidates = []
    for gpus in (g for g in GPU_COUNTS if g <= max_gpus and batch_size % g == 0):
        per_gpu = batch_size // gpus
        stage = 0 if gpus == 1 else 3
        for accumulation in (a for a in range(1, per_gpu + 1) if per_gpu % a == 0):
            micro = per_gpu // accumulation
            for checkpointing in (False, True):
                step = step_time(flops, memory, card, micro, accumulation, gpus, stage,
                                 checkpointing, run.prompt_length)
                candidates.append((gpus * step.total, gpus, accumulation, checkpointing, micro,
                                   stage, step))
    # Cheapest first; the memory plan (a meta forward per micro-batch size) only for those.
    for _, gpus, accumulation, checkpointing, micro, stage, step in sorted(
            candidates, key=lambda c: c[:4]):
        need = memory.estimate(replace(run, micro_batch=micro), gpus, stage, checkpointing)
        if fits(need, card):
            return Placement(gpus, stage, accumulation, micro, checkpointing, need, step)
    return None
