"""The prompt-tuning recipe: a frozen backbone, one trainable prompt, a DeepSpeed engine."""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from ptdist import __version__
from ptdist.backbones import Backbone, InitSpec, SoftPrompt, initial_prompt, load_backbone
from ptdist.errors import PtdistError
from ptdist.store.prompts import PromptStore
from ptdist.tasks import TaskRecord, get_task, load_split
from ptdist.training.checkpoint import (TrainState, gather_prompt_state, load_checkpoint,
                                        restore_optimizer_state, save_checkpoint)
from ptdist.training.config import TrainConfig, load_ds_config
from ptdist.training.data import global_batch, rank_slice
from ptdist.training.distributed import init_distributed
from ptdist.training.fingerprint import frozen_fingerprint
from ptdist.training.evaluation import check_task_fits, evaluate, label_words


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


def _lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    warmup, total = config.warmup, config.steps

    def scale(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return scale


def _deepspeed_config(raw: dict, config: TrainConfig, world: int) -> dict:
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


def _precision(ds: dict) -> str:
    if ds.get("fp16", {}).get("enabled"):
        raise PtdistError("fp16 is not supported: T5 overflows in fp16, and ptdist keeps one "
                          "precision policy for all backbones; use a bf16 config "
                          "(e.g. --ds-config zero2_bf16) or fp32")
    return "bf16" if ds.get("bf16", {}).get("enabled") else "fp32"


class _Progress:
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


def run_id(config: TrainConfig, task: TaskRecord, init_digest: str, precision: str) -> str:
    return config.content_hash(_digest(asdict(task)), init_digest, precision)[:16]


def train(config: TrainConfig, store: PromptStore | None = None) -> TrainResult:
    """Prompt-tune ``config.model`` on ``config.task`` and put the best prompt in the store.

    Idempotent: a run whose prompt is already stored returns it without training. Resumable:
    a run with a checkpoint continues from it and ends where the uninterrupted run would.
    """
    store = store or PromptStore()
    t0 = time.time()
    task = get_task(config.task)
    init = InitSpec.parse(config.init)
    artifact = store.load(init.arg)[0] if init.mode == "prompt" else None
    init_digest = hashlib.sha256(artifact.numpy().tobytes()).hexdigest() if artifact is not None \
        else str(init)
    raw_ds, _ = load_ds_config(config.ds_config)
    precision = _precision(raw_ds)
    prompt_id = run_id(config, task, init_digest, precision)
    if store.has(prompt_id):
        return _stored_result(store, prompt_id, t0)

    import deepspeed

    rank, world = init_distributed()
    ds_config = _deepspeed_config(raw_ds, config, world)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    zero3 = ds_config.get("zero_optimization", {}).get("stage", 0) == 3
    if zero3:
        from transformers.integrations import HfDeepSpeedConfig
        keep_alive = HfDeepSpeedConfig(ds_config)  # noqa: F841 - read by from_pretrained
    backbone = load_backbone(config.model, dtype=dtype, max_length=config.max_length)
    check_task_fits(task, backbone)
    words = label_words(task, backbone)
    # Subsets are drawn with a fixed seed: runs of every seed, and `ptdist eval`, see the same
    # rows, so their scores compare; the run's seed only sets the init and the data order.
    train_rows = load_split(task, "train", limit=config.train_limit,
                            data_dir=config.data_dir).to_list()
    eval_rows = load_split(task, "eval", limit=config.eval_limit,
                           data_dir=config.data_dir).to_list()

    run_folder = store.run_dir(prompt_id)
    resumed = load_checkpoint(run_folder)
    if resumed is not None:
        saved, state = resumed
        init_tensor = saved["prompt"]
    else:
        saved, state = {}, TrainState()
        generator = torch.Generator().manual_seed(config.seed)
        if artifact is not None:
            backbone.check_prompt(artifact)
        with deepspeed.zero.GatheredParameters([backbone.word_embeddings.weight]):
            init_tensor = initial_prompt(init, backbone.word_embeddings, config.prompt_length,
                                         backbone.special_ids(), backbone.tokenizer, generator,
                                         artifact)
    torch.manual_seed(config.seed + state.step)
    model = PromptedModel(SoftPrompt(init_tensor), backbone)
    optimizer = torch.optim.AdamW([model.prompt.weight], lr=config.lr,
                                  weight_decay=config.weight_decay)
    scale, offset = _lr_lambda(config), state.step  # a resumed schedule continues at its step
    scheduler = lambda opt: torch.optim.lr_scheduler.LambdaLR(  # noqa: E731
        opt, lambda s: scale(s + offset))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                           lr_scheduler=scheduler, config=ds_config)
    param = engine.module.prompt.weight
    fingerprint = frozen_fingerprint(engine.module.backbone)
    if resumed is not None:
        restore_optimizer_state(engine, param, saved)
    progress = _Progress(config, state.step, rank == 0)
    progress.line(f"[ptdist] run {prompt_id}: {config.model} on {task.name}, "
                  f"{len(train_rows)} train / {len(eval_rows)} eval examples, {world} process(es), "
                  f"{precision}, ZeRO-{ds_config.get('zero_optimization', {}).get('stage', 0)}"
                  + (f", resumed at step {state.step}" if resumed is not None else ""))
    best_prompt = saved.get("best_prompt")
    resumed_from = state.step if resumed is not None else None
    micro = ds_config["train_micro_batch_size_per_gpu"]
    device = engine.device

    def run_eval() -> dict[str, float]:
        return evaluate(backbone, engine.module.prompt, task, eval_rows,
                        micro * 2, config.max_new_tokens, rank, world)

    stop = False
    while state.step < config.steps and not stop:
        indices = rank_slice(global_batch(state.step, len(train_rows), config.batch_size,
                                          config.seed), rank, world)
        losses = []
        for start in range(0, len(indices), micro):
            rows = [train_rows[i] for i in indices[start:start + micro]]
            batch = {k: v.to(device) for k, v in backbone.collate(rows, words).items()}
            loss = engine(batch)
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        state.step += 1
        progress.step(state.step, sum(losses) / len(losses), engine.get_lr()[0])
        if state.step % config.eval_every == 0 or state.step == config.steps:
            metrics = run_eval()
            score = metrics[task.primary_metric]
            state.history.append({"step": state.step, "loss": sum(losses) / len(losses),
                                  "time_s": time.time() - t0, **metrics})
            tensors = gather_prompt_state(engine, param)
            if state.best_score is None or score > state.best_score:
                state.best_score, state.best_step, state.evals_since_best = score, state.step, 0
                best_prompt = tensors["prompt"].clone()
            else:
                state.evals_since_best += 1
            stop = config.patience is not None and state.evals_since_best >= config.patience
            progress.line(f"eval @ {state.step}: " + " ".join(
                f"{k}={v:.2f}" for k, v in metrics.items())
                + f" (best {task.primary_metric}={state.best_score:.2f} @ {state.best_step})"
                + (" - early stop" if stop else ""))
            if rank == 0:
                save_checkpoint(run_folder, dict(tensors, best_prompt=best_prompt), state)

    if frozen_fingerprint(engine.module.backbone) != fingerprint:
        raise RuntimeError("the frozen backbone changed during training: a ptdist bug, please "
                           "report it with the DeepSpeed config used")
    best = next(h for h in state.history if h["step"] == state.best_step)
    metrics = {k: v for k, v in best.items() if k not in ("step", "loss", "time_s")}
    result = TrainResult(prompt_id, task.name, config.model, task.primary_metric,
                         state.best_score, metrics, state.best_step, state.step, resumed_from,
                         False, time.time() - t0, str(store.root), state.history)
    if rank == 0:
        store.put(prompt_id, best_prompt, dict(
            _manifest(config, task, backbone, result, precision, world, ds_config),
            backbone_fingerprint=fingerprint))
    return result


def _manifest(config: TrainConfig, task: TaskRecord, backbone: Backbone, result: TrainResult,
              precision: str, world: int, ds_config: dict) -> dict:
    return {
        "model": config.model, "task": task.name, "task_type": task.type, "seed": config.seed,
        "init": config.init, "steps": result.steps_run, "best_step": result.best_step,
        "metric": result.metric, "score": result.score, "metrics": result.metrics,
        "prompt_length": config.prompt_length, "width": backbone.hidden_size,
        "backbone_kind": backbone.kind, "precision": precision, "world_size": world,
        "zero_stage": ds_config.get("zero_optimization", {}).get("stage", 0),
        "config": config.to_dict(), "config_hash": result.prompt_id,
        "history": result.history, "wall_time_s": result.wall_time_s, "created": time.time(),
        "ptdist_version": __version__,
    }


def _stored_result(store: PromptStore, prompt_id: str, t0: float) -> TrainResult:
    m = store.manifest(prompt_id)
    return TrainResult(prompt_id, m["task"], m["model"], m["metric"], m["score"], m["metrics"],
                       m["best_step"], m["steps"], None, True, time.time() - t0, str(store.root),
                       m["history"])
