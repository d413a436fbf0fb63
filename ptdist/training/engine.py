"""The DeepSpeed side of a run: its config (batch sizes, clipping), the frozen backbone loaded
as that config asks, the optimizer and schedule, and the engine that trains only the prompt.
Reading a DeepSpeed config is `ptdist.distributed.ds_config`'s."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ptdist.backbones import Backbone
from ptdist.distributed.op_builds import watched_builds
from ptdist.errors import PtdistError
from ptdist.scoring.loading import frozen_model
from ptdist.training.config import TrainConfig


def deepspeed_config(raw: dict, config: TrainConfig, world: int, tasks: int = 1) -> dict:
    """The DeepSpeed config a run of ``world`` processes gets: batch sizes and clipping from
    ``config``; optimizer and scheduler removed (ptdist passes its own). A fit on several
    ``tasks`` accumulates each task's batch into one update."""
    ds = json.loads(json.dumps(raw))
    accum = int(ds.get("gradient_accumulation_steps", 1))
    if config.batch_size % (world * accum):
        raise PtdistError(
            f"batch size {config.batch_size} does not split over {world} process(es) x "
            f"{accum} accumulation step(s); use a multiple of {world * accum}"
        )
    ds.update(train_batch_size=config.batch_size * tasks,
              gradient_accumulation_steps=accum * tasks,
              train_micro_batch_size_per_gpu=config.batch_size // (world * accum),
              gradient_clipping=config.grad_clip, steps_per_print=10 ** 9)
    ds.pop("optimizer", None)  # ptdist hands DeepSpeed a torch optimizer over the prompt only
    ds.pop("scheduler", None)
    return ds


@contextmanager
def frozen_backbone(config: TrainConfig, ds_config: dict) -> Iterator[Backbone]:
    """``config.model`` as `frozen_model` loads it, its activations checkpointed if the config
    asks, for the length of the block."""
    with frozen_model(config.model, config.max_length, ds_config) as backbone:
        if config.activation_checkpointing:
            backbone.checkpoint_activations()
        yield backbone


def lr_schedule(config: TrainConfig) -> Callable[[int], float]:
    """The learning rate of each step as a fraction of ``config.lr``: a linear warm-up over
    ``config.warmup`` steps, then ``config.schedule``: constant (the paper's) or a linear decay
    to 0 at the last step."""
    warmup, total, decay = config.warmup, config.steps, config.schedule == "linear"

    def scale(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup)) if decay else 1.0

    return scale


def optimizer_for(config: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """``config.optimizer`` over ``params``: AdamW (weight decay decoupled), or Adam (weight
    decay as an L2 term of the gradient)."""
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=config.lr, weight_decay=config.weight_decay)


class PromptedModel(nn.Module):
    """What DeepSpeed wraps: the module that yields the prompt (trainable) and the frozen
    backbone."""

    def __init__(self, prompt: nn.Module, backbone: Backbone):
        super().__init__()
        self.prompt = prompt
        self.backbone = backbone

    def forward(self, batch: dict[str, torch.Tensor], *select: int) -> torch.Tensor:
        """The batch's mean loss; ``select``: which task's prompt (a fit on several tasks)."""
        prompts = self.prompt(batch["input_ids"].shape[0], *select)
        return self.backbone.loss(prompts, batch).mean()


def prompt_engine(config: TrainConfig, trainable: nn.Module, backbone: Backbone,
                  ds_config: dict, start_step: int):
    """A DeepSpeed engine whose only trainable parameters are those of ``trainable``, with
    the run's optimizer and schedule continuing at ``start_step``."""
    import deepspeed

    model = PromptedModel(trainable, backbone)
    optimizer = optimizer_for(config, list(trainable.parameters()))
    scale = lr_schedule(config)
    scheduler = lambda opt: torch.optim.lr_scheduler.LambdaLR(  # noqa: E731
        opt, lambda s: scale(s + start_step))
    with watched_builds():
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                               lr_scheduler=scheduler, config=ds_config)
    return engine
