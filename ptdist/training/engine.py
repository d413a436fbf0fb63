"""The DeepSpeed side of a run: its config (batch sizes, precision, ZeRO stage), the frozen
backbone loaded as that config asks, and the engine that trains only the prompt."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, PositiveInt
from torch import nn

from ptdist.backbones import Backbone, dtype_of, load_backbone, resolve_model_path
from ptdist.errors import PtdistError
from ptdist.files import not_a_file, read_text
from ptdist.shipped import listing, shipped_file
from ptdist.training.config import TrainConfig
from ptdist.training.op_builds import watched_builds
from ptdist.validation import json_kind, located, validate

class _Section(BaseModel):
    """A part of a DeepSpeed config that ptdist reads: its keys are checked, the others are
    DeepSpeed's to check."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class _Switch(_Section):
    enabled: bool = False


class _Zero(_Section):
    stage: Literal[0, 1, 2, 3] = 0


class _DeepSpeedConfig(_Section):
    fp16: _Switch | None = None
    bf16: _Switch | None = None
    zero_optimization: _Zero | None = None
    gradient_accumulation_steps: PositiveInt = 1


def load_ds_config(name_or_path: str) -> tuple[dict, str]:
    """A DeepSpeed config by short name (``zero2``, ``zero3_bf16`` ...) or JSON path: a JSON
    object whose precision, ZeRO and accumulation settings have the types DeepSpeed wants."""
    path = Path(name_or_path)
    if not path.suffix:  # a name: ds_configs/<name>.json, shipped with ptdist
        path = shipped_file("ds_configs", name_or_path, ".json", "DeepSpeed config",
                            "a JSON file path")
    if not_a_file(path) == "missing":
        raise PtdistError(f"DeepSpeed config '{name_or_path}' not found; give a JSON file path "
                          f"or one of: {listing('ds_configs', '.json')}")
    text = read_text(path, "DeepSpeed config")  # a FIFO or a folder is refused by its type
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise PtdistError(f"cannot read DeepSpeed config {path}: {exc}. It must be a JSON "
                          "object; see ds_configs/README.md for examples.") from None
    if not isinstance(raw, dict):
        raise PtdistError(f"DeepSpeed config {path} is {json_kind(raw)}, not a JSON object; "
                          "see ds_configs/README.md for examples")
    with located(f"DeepSpeed config {path}", "ds_configs/README.md"):
        validate(_DeepSpeedConfig, raw)
    return raw, str(path)


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


def precision_of(ds: dict) -> str:
    """``bf16`` or ``fp32``, as a DeepSpeed config asks; fp16 is refused."""
    if ds.get("fp16", {}).get("enabled"):
        raise PtdistError("fp16 is not supported: T5 overflows in fp16, and ptdist keeps one "
                          "precision policy for all backbones; use a bf16 config "
                          "(e.g. --ds-config zero2_bf16) or fp32")
    return "bf16" if ds.get("bf16", {}).get("enabled") else "fp32"


def zero_stage(ds_config: dict) -> int:
    return ds_config.get("zero_optimization", {}).get("stage", 0)


def frozen_engine_config(ds_config: dict) -> dict:
    """The DeepSpeed config of an engine that holds only a frozen backbone (a packed job's).
    ZeRO-1/2 partition optimizer state and gradients, and a frozen model has neither (DeepSpeed
    also refuses those stages without an optimizer): they run as stage 0. ZeRO-3 partitions
    the parameters themselves and is kept."""
    if zero_stage(ds_config) == 3:
        return ds_config
    return dict(ds_config, zero_optimization={"stage": 0})


def inference_config(raw: dict, precision: str, world: int) -> dict:
    """The DeepSpeed config of a frozen model that scores or reads prompts over ``world``
    processes: ``raw``'s ZeRO settings in ``precision`` (the prompts'), no optimizer, and the
    batch sizes DeepSpeed checks (one example per process: nothing steps)."""
    ds = {k: v for k, v in raw.items() if k not in ("optimizer", "scheduler", "fp16", "bf16")}
    ds.update(bf16={"enabled": precision == "bf16"}, train_batch_size=world,
              train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1,
              steps_per_print=10 ** 9)
    return frozen_engine_config(ds)


@contextmanager
def frozen_backbone(config: TrainConfig, ds_config: dict) -> Iterator[Backbone]:
    """``config.model`` as `frozen_model` loads it, its activations checkpointed if the config
    asks, for the length of the block."""
    with frozen_model(config.model, config.max_length, ds_config) as backbone:
        if config.activation_checkpointing:
            backbone.checkpoint_activations()
        yield backbone


@contextmanager
def frozen_model(model: str, max_length: int, ds_config: dict) -> Iterator[Backbone]:
    """``model`` in the precision ``ds_config`` runs, for the length of the block.

    Under ZeRO-3 transformers' marker (`HfDeepSpeedConfig`) is alive for the whole block: it
    makes from_pretrained load the weights partitioned, and generate keep the ranks in step.
    The model's path is resolved (and a preset built) before the marker exists, so a preset is
    never materialised from ZeRO-3's empty placeholders.

    ZeRO-3's partitioned load also replaces ``torch.nn.functional.linear`` with DeepSpeed's
    memory-efficient version for the rest of the process ("This will persist unless manually
    reset"), which rounds differently: a later model in the same process (a Ray worker runs
    job after job) would compute other numbers than in a fresh one. The original is put back
    when the block ends."""
    resolve_model_path(model)
    marker = None
    linear = torch.nn.functional.linear
    if zero_stage(ds_config) == 3:
        from transformers.integrations import HfDeepSpeedConfig
        marker = HfDeepSpeedConfig(ds_config)
    try:
        yield load_backbone(model, max_length=max_length,
                            dtype=dtype_of(precision_of(ds_config)))
    finally:
        del marker
        torch.nn.functional.linear = linear


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
