"""The prompt-tuning recipe: a frozen backbone, one trainable prompt, a DeepSpeed engine.

`fit` is the recipe for anything that yields a prompt (a soft prompt, or a projector applied to
another model's prompt); `train` is prompt tuning with it, idempotent through the store."""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ptdist import __version__
from ptdist.backbones import Backbone, InitSpec, SoftPrompt, initial_prompt, load_backbone
from ptdist.errors import PtdistError
from ptdist.store.prompts import PromptStore
from ptdist.tasks import TaskRecord, get_task, load_split
from ptdist.training.checkpoint import (TrainState, gather_state, load_checkpoint,
                                        restore_optimizer_state)
from ptdist.training.config import TrainConfig, load_ds_config
from ptdist.training.data import global_batch, rank_slice
from ptdist.training.distributed import finish_together, init_distributed
from ptdist.training.fingerprint import frozen_fingerprint
from ptdist.training.evaluation import check_task_fits, evaluate, label_words
from ptdist.training.tracking import RunTracker


class PromptedModel(nn.Module):
    """What DeepSpeed wraps: the soft prompt (trainable) and the frozen backbone."""

    def __init__(self, prompt: SoftPrompt, backbone: Backbone):
        super().__init__()
        self.prompt = prompt
        self.backbone = backbone

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        prompts = self.prompt(batch["input_ids"].shape[0])
        return self.backbone.loss(prompts, batch).mean()


@dataclass
class TrainResult:
    prompt_id: str
    task: str
    model: str
    metric: str
    score: float
    metrics: dict[str, float]
    best_step: int
    steps_run: int
    resumed_from: int | None
    skipped: bool
    wall_time_s: float
    store: str
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def lr_schedule(config: TrainConfig) -> Callable[[int], float]:
    warmup, total = config.warmup, config.steps

    def scale(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return scale


def deepspeed_config(raw: dict, config: TrainConfig, world: int) -> dict:
    """The DeepSpeed config a run of ``world`` processes gets: batch sizes and clipping from
    ``config``; optimizer and scheduler removed (ptdist passes its own)."""
    ds = json.loads(json.dumps(raw))
    accum = int(ds.get("gradient_accumulation_steps", 1))
    if config.batch_size % (world * accum):
        raise PtdistError(
            f"batch size {config.batch_size} does not split over {world} process(es) x "
            f"{accum} accumulation step(s); use a multiple of {world * accum}"
        )
    ds.update(train_batch_size=config.batch_size, gradient_accumulation_steps=accum,
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


class Progress:
    """Periodic one-line progress on stderr from rank 0 (readable in `ray job logs`)."""

    def __init__(self, config: TrainConfig, start_step: int, enabled: bool):
        self.config, self.enabled = config, enabled
        self.every = max(1, min(config.eval_every, config.steps // 20 or 1))
        self.t0, self.step0, self.losses = time.time(), start_step, []

    def step(self, step: int, loss: float, lr: float) -> None:
        self.losses.append(loss)
        if not self.enabled or (step % self.every and step != self.config.steps):
            return
        rate = (step - self.step0) / max(time.time() - self.t0, 1e-9)
        eta = (self.config.steps - step) / rate if rate else math.inf
        print(f"step {step}/{self.config.steps} loss {sum(self.losses) / len(self.losses):.4f} "
              f"lr {lr:.2e} {rate:.1f} step/s eta {eta:.0f}s", file=sys.stderr, flush=True)
        self.losses = []

    def line(self, text: str) -> None:
        if self.enabled:
            print(text, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class RunPlan:
    """What a run is, before any model is loaded: enough to know its id (and so whether the
    store already holds its prompt)."""

    task: TaskRecord
    init: InitSpec
    artifact: torch.Tensor | None  # the source prompt of a prompt:... init
    ds_config: dict  # as read, before batch sizes are filled in
    precision: str
    prompt_id: str


def plan_run(config: TrainConfig, store: PromptStore) -> RunPlan:
    task = get_task(config.task)
    init = InitSpec.parse(config.init)
    artifact = store.load(init.arg)[0] if init.mode == "prompt" else None
    init_digest = hashlib.sha256(artifact.numpy().tobytes()).hexdigest() if artifact is not None \
        else str(init)
    ds_config, _ = load_ds_config(config.ds_config)
    precision = precision_of(ds_config)
    prompt_id = config.content_hash(_digest(asdict(task)), init_digest, precision)[:16]
    return RunPlan(task, init, artifact, ds_config, precision, prompt_id)


def train(config: TrainConfig, store: PromptStore | None = None) -> TrainResult:
    """Prompt-tune ``config.model`` on ``config.task`` and put the best prompt in the store.

    Idempotent: a run whose prompt is already stored returns it without training. Resumable:
    a run with a checkpoint continues from it and ends where the uninterrupted run would.
    """
    store = store or PromptStore()
    t0 = time.time()
    plan = plan_run(config, store)
    if store.has(plan.prompt_id):
        return stored_result(store, plan.prompt_id, skipped=True, t0=t0)
    fitted = fit(config, plan.task, plan.ds_config, store.run_dir(plan.prompt_id),
                 lambda backbone: SoftPrompt(fresh_prompt(config, plan, backbone)),
                 f"run {plan.prompt_id}")
    result = store_finished(config, plan, fitted, store, t0)
    finish_together(fitted.world)
    return result


# The parameter name of a `SoftPrompt`, in checkpoints and in `Fitted.best`: packed and
# separate runs key it alike, so they resume from each other's checkpoints.
PROMPT = "weight"


def store_finished(config: TrainConfig, plan: RunPlan, fitted: "Fitted", store: PromptStore,
                   t0: float, **manifest: object) -> TrainResult:
    """The result of a prompt-tuning run that has finished (its steps done, or stopped
    early); rank 0 puts its best prompt and manifest (plus ``manifest``) in the store."""
    state = fitted.state
    best = next(h for h in state.history if h["step"] == state.best_step)
    metrics = {k: v for k, v in best.items() if k not in ("step", "loss", "time_s")}
    result = TrainResult(plan.prompt_id, plan.task.name, config.model, plan.task.primary_metric,
                         state.best_score, metrics, state.best_step, state.step,
                         fitted.resumed_from, False, time.time() - t0, str(store.root),
                         state.history)
    if fitted.rank == 0:
        store.put(plan.prompt_id, fitted.best[PROMPT], dict(
            _manifest(config, plan.task, fitted.backbone, result, plan.precision,
                         fitted.world, fitted.ds_config),
            backbone_fingerprint=fitted.fingerprint, **manifest))
    return result


@dataclass
class Fitted:
    """What `fit` leaves: the trained module's parameters at its best evaluation, and the facts
    of the run its caller records."""

    best: dict[str, torch.Tensor]
    state: TrainState
    backbone: Backbone
    rank: int
    world: int
    ds_config: dict
    fingerprint: str
    resumed_from: int | None


def fit(config: TrainConfig, task: TaskRecord, ds_raw: dict, run_folder: Path,
        build: Callable[[Backbone], nn.Module], label: str) -> Fitted:
    """The recipe every trained prompt shares: ``build(backbone)`` makes the module that yields
    the prompts (called with a batch size, like `SoftPrompt`); it is the only thing DeepSpeed
    trains, on ``task`` through the frozen ``config.model``, checkpointed in ``run_folder``
    and resumed from it. Call on every rank of the process group."""
    rank, world = init_distributed()
    ds_config = deepspeed_config(ds_raw, config, world)
    precision = precision_of(ds_config)
    backbone, zero3_marker = load_frozen(config, ds_config)  # the marker is held for the run
    data = load_run_data(config, task, backbone)

    resumed = load_checkpoint(run_folder)
    saved, state = resumed if resumed is not None else ({}, TrainState())
    trainable = build(backbone)
    if resumed is not None:
        trainable.load_state_dict({k: saved[k] for k in trainable.state_dict()})
    engine = _engine(config, trainable, backbone, ds_config, start_step=state.step)
    params = dict(engine.module.prompt.named_parameters())
    fingerprint = frozen_fingerprint(engine.module.backbone)
    if resumed is not None:
        restore_optimizer_state(engine, params, saved)
        torch.set_rng_state(saved["rng"])
    else:
        torch.manual_seed(config.seed)
    progress = Progress(config, state.step, rank == 0)
    progress.line(f"[ptdist] {label}: {config.model} on {task.name}, "
                  f"{len(data.train)} train / {len(data.eval)} eval examples, {world} "
                  f"process(es), {precision}, ZeRO-{zero_stage(ds_config)}"
                  + (f", resumed at step {state.step}" if resumed is not None else ""))
    resumed_from = state.step if resumed is not None else None
    tracker = RunTracker.resumed(saved, state, run_folder, task.primary_metric, config.patience)
    _fit(engine, params, task, data, config, tracker, progress, time.time(), rank, world)

    changed = frozen_fingerprint(engine.module.backbone) != fingerprint
    engine.destroy()  # releases ZeRO-3's hooks and buffers; the parameters are already gathered
    if changed:
        raise RuntimeError("the frozen backbone changed during training: a ptdist bug, please "
                           "report it with the DeepSpeed config used")
    return Fitted(tracker.best, state, backbone, rank, world, ds_config, fingerprint,
                  resumed_from)


def load_frozen(config: TrainConfig, ds_config: dict) -> tuple[Backbone, object | None]:
    """``config.model`` in the precision ``ds_config`` runs, loaded partitioned under ZeRO-3;
    and, under ZeRO-3, transformers' marker of it, read by from_pretrained (partitioned
    loading) and generate (ranks kept in step): the caller holds it for the whole run."""
    zero3_marker = None
    if zero_stage(ds_config) == 3:
        from transformers.integrations import HfDeepSpeedConfig
        zero3_marker = HfDeepSpeedConfig(ds_config)
    dtype = torch.bfloat16 if precision_of(ds_config) == "bf16" else torch.float32
    return load_backbone(config.model, max_length=config.max_length, dtype=dtype), zero3_marker


@dataclass
class RunData:
    train: list[dict]
    eval: list[dict]
    words: list[str] | None  # label words for this backbone; None for generation tasks


def load_run_data(config: TrainConfig, task: TaskRecord, backbone: Backbone) -> RunData:
    """A run's training and evaluation rows, after checking the task suits the backbone."""
    check_task_fits(task, backbone)
    # Subsets are drawn with a fixed seed: runs of every seed, and `ptdist eval`, see the same
    # rows, so their scores compare; the run's seed only sets the init and the data order.
    return RunData(
        train=load_split(task, "train", limit=config.train_limit,
                         data_dir=config.data_dir).to_list(),
        eval=load_split(task, "eval", limit=config.eval_limit,
                        data_dir=config.data_dir).to_list(),
        words=label_words(task, backbone))


def zero_stage(ds_config: dict) -> int:
    return ds_config.get("zero_optimization", {}).get("stage", 0)


def fresh_prompt(config: TrainConfig, plan: RunPlan, backbone: Backbone) -> torch.Tensor:
    import deepspeed

    if plan.artifact is not None:
        backbone.check_prompt(plan.artifact)
    generator = torch.Generator().manual_seed(config.seed)
    # Under ZeRO-3 the embedding matrix is partitioned; vocab/text init read its rows.
    with deepspeed.zero.GatheredParameters([backbone.word_embeddings.weight]):
        return initial_prompt(plan.init, backbone.word_embeddings, config.prompt_length,
                              backbone.special_ids(), backbone.tokenizer, generator,
                              plan.artifact)


def _engine(config: TrainConfig, trainable: nn.Module, backbone: Backbone, ds_config: dict,
            start_step: int):
    """A DeepSpeed engine whose only trainable parameters are those of ``trainable``."""
    import deepspeed

    model = PromptedModel(trainable, backbone)
    optimizer = torch.optim.AdamW(list(trainable.parameters()), lr=config.lr,
                                  weight_decay=config.weight_decay)
    scale = lr_schedule(config)  # a resumed schedule continues at its step
    scheduler = lambda opt: torch.optim.lr_scheduler.LambdaLR(  # noqa: E731
        opt, lambda s: scale(s + start_step))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                           lr_scheduler=scheduler, config=ds_config)
    return engine


def _fit(engine, params: dict[str, nn.Parameter], task: TaskRecord, data: RunData,
         config: TrainConfig, tracker: RunTracker, progress: Progress, t0: float, rank: int,
         world: int) -> None:
    """Train from the tracker's step to the end (or an early stop), evaluating and
    checkpointing every ``eval_every`` steps."""
    backbone = engine.module.backbone
    micro = engine.train_micro_batch_size_per_gpu()
    state = tracker.state
    while state.step < config.steps and not tracker.stopped:
        indices = rank_slice(global_batch(state.step, len(data.train), config.batch_size,
                                          config.seed), rank, world)
        losses = []
        for start in range(0, len(indices), micro):
            rows = [data.train[i] for i in indices[start:start + micro]]
            batch = {k: v.to(engine.device) for k, v in backbone.collate(rows, data.words).items()}
            loss = engine(batch)
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        state.step += 1
        loss = sum(losses) / len(losses)
        progress.step(state.step, loss, engine.get_lr()[0])
        if state.step % config.eval_every and state.step != config.steps:
            continue
        metrics = evaluate(backbone, engine.module.prompt, task, data.eval, micro * 2,
                           config.max_new_tokens, rank, world)
        progress.line(tracker.record(loss, metrics, time.time() - t0,
                                     gather_state(engine, params), list(params), rank == 0))


def _manifest(config: TrainConfig, task: TaskRecord, backbone: Backbone, result: TrainResult,
              precision: str, world: int, ds_config: dict) -> dict:
    return {
        "model": config.model, "task": task.name, "task_type": task.type, "seed": config.seed,
        "init": config.init, "steps": result.steps_run, "best_step": result.best_step,
        "metric": result.metric, "score": result.score, "metrics": result.metrics,
        "prompt_length": config.prompt_length, "width": backbone.hidden_size,
        "backbone_kind": backbone.kind, "precision": precision, "world_size": world,
        "zero_stage": zero_stage(ds_config),
        "config": config.to_dict(), "config_hash": result.prompt_id,
        "resumed_from": result.resumed_from,
        "history": result.history, "wall_time_s": result.wall_time_s, "created": time.time(),
        "ptdist_version": __version__,
    }


def stored_result(store: PromptStore, prompt_id: str, skipped: bool,
                  t0: float | None = None) -> TrainResult:
    """The result of a run whose prompt is in the store. ``skipped``: this call did not train
    it (its wall time is then that of the lookup since ``t0``, not of the training)."""
    m = store.manifest(prompt_id)
    wall = time.time() - t0 if skipped and t0 is not None else m["wall_time_s"]
    return TrainResult(prompt_id, m["task"], m["model"], m["metric"], m["score"], m["metrics"],
                       m["best_step"], m["steps"], None if skipped else m.get("resumed_from"),
                       skipped, wall, str(store.root), m["history"])
