"""The recipe for anything that yields a prompt from trainable weights (a projector applied to
another model's prompt), top to bottom: a frozen backbone, the trainable module, a DeepSpeed
engine, evaluation with keep-best and early stopping, checkpoint and resume.

Prompt tuning itself (`train`) runs in `packed.py`, where a prompt is a row of its job's
prompts: one implementation for a run alone and a run packed with others, so the two give the
same prompt bit for bit."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ptdist.backbones import Backbone
from ptdist.distributed.ds_config import precision_of, zero_stage
from ptdist.distributed.group import Shard, init_distributed, mean_over_ranks
from ptdist.scoring import Scored, predict
from ptdist.tasks import TaskRecord
from ptdist.training.checkpoint import (TrainState, gather_state, load_checkpoint,
                                        restore_optimizer_state)
from ptdist.training.config import TrainConfig
from ptdist.training.data import global_batch
from ptdist.training.engine import deepspeed_config, frozen_backbone, prompt_engine
from ptdist.training.fingerprint import frozen_fingerprint
from ptdist.training.progress import RunProgress
from ptdist.training.run import Fitted, RunData, read_run_data, suited, unified_verbalizer
from ptdist.training.tracking import RunTracker

log = logging.getLogger(__name__)

MEAN_METRIC = "mean_primary"  # a fit on several tasks: the mean of their primary metrics


def fit(config: TrainConfig, tasks: Sequence[TaskRecord], ds_raw: dict, run_folder: Path,
        build: Callable[[Backbone], nn.Module], label: str, unified: bool = False) -> Fitted:
    """The recipe of trained weights that yield prompts: ``build(backbone)`` makes the module
    that yields the prompts (called with a batch size, like `SoftPrompt`; with several
    ``tasks``, also with the task's index); it is the only thing DeepSpeed trains, on ``tasks``
    through the frozen ``config.model``, checkpointed in ``run_folder`` and resumed from it.
    Call on every rank of the process group.

    With several tasks, every step takes a batch of ``config.batch_size`` rows of each task
    (accumulated, so each task weighs the same in the update), and the score that keep-best
    and early stopping follow is the mean of the tasks' primary metrics (`fit_metric`).
    ``unified``: the tasks train through one verbalizer (`unified_verbalizer`)."""
    shard = init_distributed()
    ds_config = deepspeed_config(ds_raw, config, shard.world, tasks=len(tasks))
    rows = [read_run_data(config, task) for task in tasks]
    log.debug(f"{label}: DeepSpeed config {json.dumps(ds_config, sort_keys=True)}")
    with frozen_backbone(config, ds_config) as backbone:
        data = [suited(d, config, task, backbone) for d, task in zip(rows, tasks)]
        if unified:
            data = unified_verbalizer(data)
        resumed = load_checkpoint(run_folder)
        saved, state = resumed if resumed is not None else ({}, TrainState())
        trainable = build(backbone)
        if resumed is not None:
            trainable.load_state_dict({k: saved[k] for k in trainable.state_dict()})
        engine = prompt_engine(config, trainable, backbone, ds_config, start_step=state.step)
        params = dict(engine.module.prompt.named_parameters())
        fingerprint = frozen_fingerprint(engine.module.backbone)
        if resumed is not None:
            restore_optimizer_state(engine, params, saved)
            torch.set_rng_state(saved["rng"])
        else:
            torch.manual_seed(config.seed)
        sizes = " + ".join(f"{len(d.train)}" for d in data)
        log.info(f"[ptdist] {label}: {config.model} on {', '.join(t.name for t in tasks)}, "
                 f"{sizes} train / {sum(len(d.eval) for d in data)} eval examples, {shard.world} "
                 f"process(es), {precision_of(ds_config)}, ZeRO-{zero_stage(ds_config)}"
                 + (f", resumed at step {state.step}" if resumed is not None else ""))
        resumed_from = state.step if resumed is not None else None
        tracker = RunTracker.resumed(saved, state, run_folder, fit_metric(tasks),
                                     config.patience, label)
        with RunProgress(label, config.steps, state.step) as progress:
            _loop(engine, params, list(zip(tasks, data)), config, tracker, progress,
                  time.time(), shard)
        changed = frozen_fingerprint(engine.module.backbone) != fingerprint
        engine.destroy()  # releases ZeRO-3's hooks and buffers; the parameters are gathered
    if changed:
        raise RuntimeError("the frozen backbone changed during training: a ptdist bug, please "
                           "report it with the DeepSpeed config used")
    return Fitted(tracker.best, state, backbone, shard, ds_config, fingerprint, resumed_from)


def fit_metric(tasks: Sequence[TaskRecord]) -> str:
    """The score a fit keeps the best of: the task's primary metric, or with several tasks
    `MEAN_METRIC`, the mean of theirs."""
    return tasks[0].primary_metric if len(tasks) == 1 else MEAN_METRIC


def _loop(engine, params: dict[str, nn.Parameter], tasks: list[tuple[TaskRecord, RunData]],
          config: TrainConfig, tracker: RunTracker, progress: RunProgress, t0: float,
          shard: Shard) -> None:
    """Train from the tracker's step to the end (or an early stop), evaluating and
    checkpointing every ``eval_every`` steps, and once before the first step."""
    backbone = engine.module.backbone
    micro = engine.train_micro_batch_size_per_gpu()
    state = tracker.state
    # One task: the prompt module is called with a batch size; several: also the task index.
    select = [()] if len(tasks) == 1 else [(k,) for k in range(len(tasks))]

    def evaluate_now(loss: float | None) -> None:
        metrics = [Scored.of(task, data.eval, predict(
            backbone, lambda n, k=k: engine.module.prompt(n, *k), task, data.eval, micro * 2,
            config.max_new_tokens, shard)).metrics[0] for (task, data), k in zip(tasks, select)]
        log.info(tracker.record(loss, _combined(tasks, metrics), time.time() - t0,
                                gather_state(engine, params), list(params), shard.leads))

    if tracker.at_start:
        evaluate_now(None)
    while state.step < config.steps and not tracker.stopped:
        losses = []
        for (task, data), k in zip(tasks, select):
            indices = shard.batch_part(global_batch(state.step, len(data.train),
                                                    config.batch_size, config.seed))
            for start in range(0, len(indices), micro):
                rows = [data.train[i] for i in indices[start:start + micro]]
                batch = {key: v.to(engine.device)
                         for key, v in backbone.collate(rows, data.words).items()}
                loss = engine(batch, *k)
                engine.backward(loss)
                engine.step()
                losses.append(loss.item())
        state.step += 1
        # The global batch's loss, as one process computes it: the history of a prompt id is
        # the same whatever the number of processes that trained it.
        loss = mean_over_ranks([sum(losses) / len(losses)])[0]
        if not math.isfinite(loss):
            raise tracker.diverged("the loss")
        progress.step(state.step, loss, engine.get_lr()[0])
        if state.step % config.eval_every == 0 or state.step == config.steps:
            evaluate_now(loss)


def _combined(tasks: list[tuple[TaskRecord, RunData]],
              metrics: list[dict[str, float]]) -> dict[str, float]:
    """One task's metrics as they are; several tasks' as ``<task>/<metric>`` and their mean
    primary metric."""
    if len(tasks) == 1:
        return metrics[0]
    out = {f"{task.name}/{name}": value for (task, _), scores in zip(tasks, metrics)
           for name, value in scores.items()}
    out[MEAN_METRIC] = sum(scores[task.primary_metric]
                           for (task, _), scores in zip(tasks, metrics)) / len(tasks)
    return out
