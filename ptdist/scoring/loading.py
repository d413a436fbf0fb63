"""`load`: a frozen model for inference, whole on one device or partitioned over the process
group under a DeepSpeed ZeRO-3 config; the precision and device it runs in."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from ptdist.backbones import Backbone, dtype_of, load_backbone, resolve_model_path
from ptdist.distributed.ds_config import (frozen_engine_config, load_ds_config, precision_of,
                                          zero_stage)
from ptdist.distributed.group import init_distributed
from ptdist.distributed.op_builds import watched_builds
from ptdist.store.manifests import PromptManifest


@contextmanager
def load(model: str, max_length: int, precision: str = "fp32", device: str | None = None,
         ds_config: str | None = None) -> Iterator[Backbone]:
    """``model`` frozen for inference in ``precision``, reading texts of up to ``max_length``
    tokens, for the length of the block: whole on ``device`` (`inference_device`), or, given
    a DeepSpeed config (a ``ds_configs/`` name or path), partitioned over the process group
    this process is in (ZeRO-3: each rank holds 1/world of the weights, and every layer is
    gathered while it runs; on the rank's GPU, else the CPU). Partitioned, it is a collective:
    every rank of the group enters the block and runs the same forwards (`score` gives each
    rank a padded part of the rows)."""
    if ds_config is None:
        backbone = load_backbone(model, max_length=max_length, dtype=dtype_of(precision))
        yield backbone.to(inference_device(device))
        return
    import deepspeed

    ds = inference_config(load_ds_config(ds_config)[0], precision, init_distributed().world)
    with frozen_model(model, max_length, ds) as backbone:
        with watched_builds():
            engine, *_ = deepspeed.initialize(model=backbone, config=ds)
        yield engine.module


def inference_precision(prompts: Sequence[PromptManifest], given: str | None) -> str:
    """The precision a stage runs a frozen model in to score or read ``prompts``: ``given``
    (a stage setting), else the one they were trained in (their manifests): a prompt trained
    in bf16 is scored in bf16. Prompts trained in different precisions are read in fp32."""
    if given is not None:
        dtype_of(given)  # names a known precision, or stops
        return given
    trained = {m.precision for m in prompts}
    return trained.pop() if len(trained) == 1 else "fp32"


def inference_device(device: str | None) -> torch.device:
    """``device``, else the GPU this process holds (Ray gives a job the GPUs it reserved),
    else the CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


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

