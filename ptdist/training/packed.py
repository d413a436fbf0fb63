"""Prompt-tuning runs on one copy of a frozen backbone: K runs packed into one job, or one run
alone (`train` is a pack of one).

Prompt tuning spends nearly all its time in the frozen model, so runs that share a backbone (K
tasks, seeds or inits) share its load, its process and its place on the device. Everything else
stays per run: data order, Adam(W) state, learning-rate schedule, gradient clipping,
evaluation, best prompt, early stopping, checkpoint and stored result. Each run's forward and
backward, and its evaluation, run on its own batch, shaped as the run alone shapes it, and its
update is computed row by row (`stacked.StackedAdam`): a packed run's prompt is bit for bit
that of the same run trained alone, whichever runs share its pack (on one machine and number
of processes). So packing is a way to execute runs, not a different
run: it keeps the prompt id, and a packed run and a separate one resume from each other's
checkpoints.

Why not one forward for the whole pack: examples padded to the pack's widest text, and a
matmul of K batches at once, round differently than the run's own batch; when packs did that
(before issue 26) a packed prompt differed from the separate run's by up to 6e-6 after six
steps (tests/test_packed.py's runs), so a run's numbers depended on which runs it happened to
be packed with.

DeepSpeed holds the frozen backbone: its placement, precision and, under ZeRO-3, its
partitioning across ranks. ZeRO-1/2 partition what a run trains, and a prompt is tiny: every rank
keeps the prompts whole, averages each run's gradient in an all-reduce and steps each run by
its own optimizer settings and state, clipped by the run's own gradient norm.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ptdist.backbones import Backbone
from ptdist.backbones.prompt import PROMPT_PARAM
from ptdist.distributed.ds_config import frozen_engine_config, precision_of, zero_stage
from ptdist.distributed.group import Shard, finish_together, init_distributed, mean_over_ranks
from ptdist.distributed.op_builds import watched_builds
from ptdist.errors import PtdistError
from ptdist.scoring import Scored, predict
from ptdist.store import Store
from ptdist.training.checkpoint import ADAM_KEYS, TrainState, load_checkpoint
from ptdist.training.compiled import TrainingStep
from ptdist.training.config import TrainConfig
from ptdist.training.data import BatchOrder
from ptdist.training.engine import deepspeed_config, frozen_backbone, lr_schedule
from ptdist.training.fingerprint import frozen_fingerprint
from ptdist.training.lengths import row_lengths, text_cut
from ptdist.training.progress import RunProgress
from ptdist.training.run import (Fitted, RunData, RunPlan, TrainResult, fresh_prompt,
                                 plan_run, read_run_data, store_finished, stored_result,
                                 suited)
from ptdist.training.stacked import RowStep, StackedAdam
from ptdist.training.tracking import Diverged, RunTracker

log = logging.getLogger(__name__)

# What the runs of one pack must share: one backbone, one prompt shape, one DeepSpeed config.
# Everything else (task, seed, init, learning rate, steps, batch size, patience...) may differ.
SHARED = ("model", "prompt_length", "max_length", "ds_config", "activation_checkpointing")


def check_packable(configs: list[TrainConfig]) -> None:
    if not configs:
        raise PtdistError("a packed job needs at least one run")
    for name in SHARED:
        values = sorted({str(getattr(c, name)) for c in configs})
        if len(values) > 1:
            raise PtdistError(f"runs packed into one job must share their {name} (one frozen "
                              f"backbone, one prompt shape, one DeepSpeed config); got "
                              f"{', '.join(values)}. Pack only runs of one model entry, or run "
                              "them separately")


def train(config: TrainConfig, store: Store | None = None) -> TrainResult:
    """Prompt-tune ``config.model`` on ``config.task`` and put the best prompt in the store: a
    pack of one run.

    Idempotent: a run whose prompt is already stored returns it without training. Resumable:
    a run with a checkpoint continues from it and ends where the uninterrupted run would.
    """
    return train_packed([config], store)[0]


def train_packed(configs: list[TrainConfig], store: Store | None = None) -> list[TrainResult]:
    """Prompt-tune every run of ``configs`` together on one frozen backbone; one result per
    config, in order. Runs already in the store are read from it; interrupted runs resume
    from their checkpoints. Call on every rank of the process group."""
    store = store or Store()
    t0 = time.time()
    check_packable(configs)
    plans = [plan_run(config, store) for config in configs]
    results: dict[str, TrainResult] = {}
    todo: dict[str, tuple[TrainConfig, RunPlan]] = {}
    for config, plan in zip(configs, plans):
        if store.prompts.has(plan.prompt_id):
            results[plan.prompt_id] = stored_result(store, plan.prompt_id, skipped=True, t0=t0)
        else:
            store.prompts.require_own_folder(plan.prompt_id)  # before the model loads
            todo.setdefault(plan.prompt_id, (config, plan))
    if todo:
        results.update(_train_pack(list(todo.values()), store, t0))
    return [results[plan.prompt_id] for plan in plans]


@dataclass
class _Run:
    """One run of a pack, with its own row of the pack's prompts, schedule and bookkeeping."""

    config: TrainConfig
    plan: RunPlan
    data: RunData
    row: int  # its prompt's row in the pack's `StackedAdam`
    schedule: Callable[[int], float]  # learning-rate scale by the run's step
    tracker: RunTracker
    micro: int  # examples per micro-batch on this rank
    ds_config: dict
    resumed_from: int | None
    losses: list[float]
    order: BatchOrder  # the global batch of each of its steps
    cut: int | None  # the most text tokens its training batches hold (None: max_length's)
    step: TrainingStep  # its micro-batches' forward and backward, eager or compiled
    diverged: Diverged | None = None  # a diverged run stops; the others of its pack go on

    @property
    def active(self) -> bool:
        return (self.tracker.state.step < self.config.steps and not self.tracker.stopped
                and self.diverged is None)

    @property
    def eval_due(self) -> bool:
        step = self.tracker.state.step
        return step % self.config.eval_every == 0 or step == self.config.steps

    @property
    def lr(self) -> float:
        """The learning rate of the run's next step."""
        return self.config.lr * self.schedule(self.tracker.state.step)

    def row_step(self, grad: torch.Tensor) -> RowStep:
        c = self.config
        return RowStep(self.row, grad, self.lr, c.weight_decay, c.grad_clip,
                       decoupled=c.optimizer == "adamw")

    def checkpoint_tensors(self, prompts: StackedAdam) -> dict[str, torch.Tensor]:
        """The prompt and its Adam state, keyed as `gather_state` keys a DeepSpeed engine's
        (a run alone trained on one before issue 26: its checkpoints resume here)."""
        tensors = {PROMPT_PARAM: prompts.weight[self.row].detach()}
        tensors.update({f"{PROMPT_PARAM}.{key}": value
                        for key, value in prompts.state_of(self.row).items()})
        out = {k: v.detach().float().cpu().clone() for k, v in tensors.items()}
        out["adam_step"] = torch.tensor(float(prompts.steps[self.row]))
        return out


def _train_pack(todo: list[tuple[TrainConfig, RunPlan]], store: Store,
                t0: float) -> dict[str, TrainResult]:
    import deepspeed

    shard = init_distributed()
    first = todo[0][0]
    ds_config = deepspeed_config(todo[0][1].ds_config, first, shard.world)
    read: dict[tuple, RunData] = {}  # runs of one task (seeds, inits) share its rows
    for config, plan in todo:
        if _data_key(config) not in read:
            read[_data_key(config)] = read_run_data(config, plan.task)
    with frozen_backbone(first, ds_config) as backbone:
        with watched_builds():
            engine, *_ = deepspeed.initialize(model=backbone,
                                              config=frozen_engine_config(ds_config))
        backbone = engine.module
        fingerprint = frozen_fingerprint(backbone)
        runs, prompts = _start_runs(todo, read, backbone, store, engine.device, shard.world)
        what = f"pack of {len(runs)} runs" if len(runs) > 1 else runs[0].tracker.label
        log.info(f"[ptdist] {what} on {first.model}: {shard.world} process(es), "
                 f"{precision_of(ds_config)}, ZeRO-{zero_stage(ds_config)}")
        for run in runs:
            log.info(f"  {run.tracker.label}: {len(run.data.train)} train / "
                     f"{len(run.data.eval)} eval examples{_levers(run)}"
                     + (f", resumed at step {run.resumed_from}"
                        if run.resumed_from is not None else ""))
        with RunProgress(what, max(r.config.steps for r in runs),
                         min(r.tracker.state.step for r in runs)) as progress:
            results = _train_runs(runs, prompts, backbone, fingerprint, store, shard, progress,
                                  t0)
        changed = frozen_fingerprint(backbone) != fingerprint
        engine.destroy()
    if changed:
        raise RuntimeError("the frozen backbone changed during packed training: a ptdist bug, "
                           "please report it with the DeepSpeed config used")
    finish_together(shard.world)
    return results


def _levers(run: _Run) -> str:
    """How the run spends less compute, as its start line says it."""
    c = run.config
    return "".join((
        f", texts cut at {run.cut} tokens ({c.length_quantile:g} quantile)"
        if run.cut is not None else "",
        f", length-bucketed batches (windows of {c.bucket_window})" if c.bucket_window else "",
        f", stops after {c.patience} evaluation(s) without a new best from step {c.min_steps}"
        if c.patience is not None else "",
        ", compiled step" if c.compile else ""))


def _data_key(config: TrainConfig) -> tuple:
    """What a run's rows depend on."""
    return config.task, config.train_limit, config.eval_limit, config.data_dir


def _start_runs(todo: list[tuple[TrainConfig, RunPlan]], read: dict[tuple, RunData],
                backbone: Backbone, store: Store, device: torch.device,
                world: int) -> tuple[list[_Run], StackedAdam]:
    """The pack's runs, each from its checkpoint or its init, on the rows ``read`` holds by
    `_data_key`, and their prompts as one tensor."""
    loaded: dict[tuple, RunData] = {}
    steps: dict[bool, TrainingStep] = {}  # eager, compiled: one each for the pack's runs
    runs, inits, moments = [], [], []
    for row, (config, plan) in enumerate(todo):
        key = _data_key(config)
        if key not in loaded:
            loaded[key] = suited(read[key], config, plan.task, backbone)
        if config.compile not in steps:
            steps[config.compile] = TrainingStep(backbone, config.compile)
        folder = store.layout.run_dir(plan.prompt_id)
        resumed = load_checkpoint(folder)
        saved, state = resumed if resumed is not None else ({}, TrainState())
        inits.append(saved[PROMPT_PARAM] if resumed is not None
                     else fresh_prompt(config, plan, backbone))
        if f"{PROMPT_PARAM}.{ADAM_KEYS[0]}" in saved:
            moments.append((row, *(saved[f"{PROMPT_PARAM}.{key}"] for key in ADAM_KEYS),
                            int(saved["adam_step"])))
        ds_config = deepspeed_config(plan.ds_config, config, world)
        tracker = RunTracker.resumed(saved, state, folder, plan.task.primary_metric,
                                     config.patience,
                                     f"run {plan.prompt_id} ({plan.task.name}, seed {config.seed})",
                                     config.min_steps)
        train = loaded[key].train
        cut = None if config.length_quantile is None else \
            text_cut(backbone, train, config.length_quantile)
        order = BatchOrder(len(train), config.batch_size, config.seed, config.bucket_window,
                           row_lengths(backbone, train, cut))
        runs.append(_Run(config, plan, loaded[key], row, lr_schedule(config), tracker,
                         ds_config["train_micro_batch_size_per_gpu"], ds_config,
                         state.step if resumed is not None else None, [], order, cut,
                         steps[config.compile]))
    prompts = StackedAdam(torch.stack([p.float() for p in inits]).to(device))
    for row, exp_avg, exp_avg_sq, step in moments:
        prompts.restore(row, exp_avg.to(device), exp_avg_sq.to(device), step)
    return runs, prompts


def _train_runs(runs: list[_Run], prompts: StackedAdam, backbone: Backbone, fingerprint: str,
                store: Store, shard: Shard, progress: RunProgress,
                t0: float) -> dict[str, TrainResult]:
    """Step the active runs together until every run is done; each is stored as soon as it is
    done, so a later failure cannot lose it. Runs that diverged are named in one error once the
    others are stored."""
    results: dict[str, TrainResult] = {}
    pack = [run.plan.prompt_id for run in runs] if len(runs) > 1 else None
    _evaluate(backbone, prompts, [r for r in runs if r.tracker.at_start], shard, t0)
    step = min(r.tracker.state.step for r in runs)
    while True:
        for run in runs:
            if not run.active and run.diverged is None and run.plan.prompt_id not in results:
                results[run.plan.prompt_id] = _finish(run, backbone, fingerprint, store, shard,
                                                      t0, pack)
        active = [run for run in runs if run.active]
        if not active:
            diverged = [str(run.diverged) for run in runs if run.diverged is not None]
            if diverged:
                raise Diverged(" | ".join(diverged) + f" ({len(results)} other run(s) of its "
                               "pack finished and are stored)")
            return results
        lr = active[0].lr
        _step(backbone, prompts, active, shard)
        step += 1
        progress.step(step, sum(r.losses[-1] for r in active) / len(active), lr)
        _evaluate(backbone, prompts, [r for r in active if r.eval_due and r.diverged is None],
                  shard, t0)


def _step(backbone: Backbone, prompts: StackedAdam, runs: list[_Run], shard: Shard) -> None:
    """One optimizer step of every run in ``runs``: each run's micro-batches through the
    backbone on their own, its gradient averaged over ranks; then every run clipped and
    stepped. Each run's loss is logged over its global batch (the mean of the ranks' losses,
    the same on every rank, as one process logs it), and a loss that is not finite on any rank
    stops the run on every rank."""
    steps = [run.row_step(_gradient(backbone, prompts, run, shard)) for run in runs]
    for run, loss in zip(runs, mean_over_ranks([r.losses[-1] for r in runs])):
        run.losses[-1] = loss
        if not math.isfinite(loss):
            run.diverged = run.tracker.diverged("the loss")
    prompts.step(steps)
    for run in runs:
        run.tracker.state.step += 1


def _gradient(backbone: Backbone, prompts: StackedAdam, run: _Run, shard: Shard) -> torch.Tensor:
    """The gradient of ``run``'s prompt at its next step, over its global batch, as a
    separate run's engine computes it: each micro-batch's mean loss over the accumulation
    steps. Appends the run's loss on this rank (the mean of its micro-batches' mean losses)
    to its log."""
    device = prompts.weight.device
    accumulation = run.ds_config["gradient_accumulation_steps"]
    mine = shard.batch_part(run.order(run.tracker.state.step))
    prompt = prompts.weight[run.row].detach().clone().requires_grad_(True)
    losses = []
    for part in range(accumulation):
        rows = [run.data.train[i] for i in mine[part * run.micro:(part + 1) * run.micro]]
        batch = {k: v.to(device)
                 for k, v in backbone.collate(rows, run.data.words, run.cut).items()}
        losses.append(run.step(prompt, batch, accumulation))
    run.losses.append(sum(losses) / len(losses))
    grad = prompt.grad
    if shard.world > 1:
        import torch.distributed as dist

        dist.all_reduce(grad)
        grad /= shard.world
    return grad


def _evaluate(backbone: Backbone, prompts: StackedAdam, runs: list[_Run], shard: Shard,
              t0: float) -> None:
    """Evaluate ``runs``, each on its own batches as a separate run is evaluated."""
    for run in runs:
        weight = prompts.weight[run.row]
        task, rows = run.plan.task, run.data.eval
        scores = Scored.of(task, rows, predict(
            backbone, lambda n, w=weight: w.unsqueeze(0).expand(n, -1, -1), task, rows,
            run.micro * 2, run.config.max_new_tokens, shard)).metrics[0]
        try:
            line = run.tracker.record(run.losses[-1] if run.losses else None, scores,
                                      time.time() - t0, run.checkpoint_tensors(prompts),
                                      [PROMPT_PARAM], shard.leads)
        except Diverged as exc:
            run.diverged = exc
            continue
        log.info(f"{run.tracker.label} {line}")


def _finish(run: _Run, backbone: Backbone, fingerprint: str, store: Store, shard: Shard,
            t0: float, pack: list[str] | None) -> TrainResult:
    """Store a run that has finished (its steps done, or stopped early)."""
    fitted = Fitted(run.tracker.best, run.tracker.state, backbone, shard, run.ds_config,
                    fingerprint, run.resumed_from)
    return store_finished(run.config, run.plan, fitted, store, t0, packed_with=pack,
                          text_cut=run.cut)
