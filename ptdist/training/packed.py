"""Packed multi-prompt tuning: K prompt-tuning runs on one copy of a frozen backbone.

Prompt tuning spends nearly all its time in the frozen model, so runs that share a backbone (K
tasks, seeds or inits) share its forwards: each micro-batch holds the micro-batch of every run,
each example behind its own run's prompt. Everything else stays per run: data order, AdamW
state, learning-rate schedule, gradient clipping, evaluation, best prompt, early stopping,
checkpoint and stored result. A packed run's updates equal those of the same run trained alone
(`train`) on the same batches, so it has the same prompt id: packing is a way to execute runs,
not a different run, and a packed run and a separate one resume from each other's checkpoints.

DeepSpeed holds the frozen backbone: its placement, precision and, under ZeRO-3, its
partitioning across ranks. ZeRO-1/2 partition what a run trains, and a prompt is tiny: every rank
keeps the prompts whole, averages the pack's gradients in one all-reduce and steps each run by
its own AdamW settings and state, clipped by the run's own gradient norm (as a separate run's
engine clips its one prompt), never by the norm of the whole pack.

Per-run work is what keeps a pack from the speed of one run with a K times larger batch (the
bound benchmarks/packed.py measures), so none of it is done run by run within a step: the
prompts are the rows of one tensor stepped together (`stacked.StackedAdamW`), the rows of all
runs of one task are collated in one call, and the loss of every example is computed in one
pass, each weighted as its run's mean loss would weigh it.
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
from ptdist.errors import PtdistError
from ptdist.store import Store
from ptdist.training.checkpoint import ADAM_KEYS, TrainState, load_checkpoint
from ptdist.training.config import TrainConfig
from ptdist.training.data import global_batch, rank_slice
from ptdist.training.distributed import finish_together, init_distributed, mean_over_ranks
from ptdist.training.engine import (deepspeed_config, frozen_backbone, frozen_engine_config,
                                    lr_schedule, precision_of, zero_stage)
from ptdist.training.evaluation import evaluate_each
from ptdist.training.fingerprint import frozen_fingerprint
from ptdist.training.op_builds import watched_builds
from ptdist.training.progress import RunProgress
from ptdist.training.run import (Fitted, RunData, RunPlan, TrainResult, fresh_prompt,
                                 plan_run, read_run_data, store_finished, stored_result,
                                 suited)
from ptdist.training.stacked import RowStep, StackedAdamW
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
    row: int  # its prompt's row in the pack's `StackedAdamW`
    schedule: Callable[[int], float]  # learning-rate scale by the run's step
    tracker: RunTracker
    micro: int  # examples per micro-batch on this rank
    ds_config: dict
    resumed_from: int | None
    losses: list[float]
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

    def row_step(self) -> RowStep:
        return RowStep(self.row, self.lr, self.config.weight_decay, self.config.grad_clip)

    def checkpoint_tensors(self, prompts: StackedAdamW) -> dict[str, torch.Tensor]:
        """The prompt and its Adam state, keyed as `gather_state` keys a separate run's."""
        tensors = {PROMPT_PARAM: prompts.weight[self.row].detach()}
        tensors.update({f"{PROMPT_PARAM}.{key}": value
                        for key, value in prompts.state_of(self.row).items()})
        out = {k: v.detach().float().cpu().clone() for k, v in tensors.items()}
        out["adam_step"] = torch.tensor(float(prompts.steps[self.row]))
        return out


def _train_pack(todo: list[tuple[TrainConfig, RunPlan]], store: Store,
                t0: float) -> dict[str, TrainResult]:
    import deepspeed

    rank, world = init_distributed()
    first = todo[0][0]
    ds_config = deepspeed_config(todo[0][1].ds_config, first, world)
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
        runs, prompts = _start_runs(todo, read, backbone, store, engine.device, world)
        pack = f"pack of {len(runs)} run(s) on {first.model}"
        log.info(f"[ptdist] {pack}: {world} process(es), {precision_of(ds_config)}, "
                 f"ZeRO-{zero_stage(ds_config)}")
        for run in runs:
            log.info(f"  {run.tracker.label}: {len(run.data.train)} train / "
                     f"{len(run.data.eval)} eval examples"
                     + (f", resumed at step {run.resumed_from}"
                        if run.resumed_from is not None else ""))
        with RunProgress(pack, max(r.config.steps - r.tracker.state.step for r in runs)) \
                as progress:
            results = _train_runs(runs, prompts, backbone, fingerprint, store, rank, world,
                                  progress, t0)
        changed = frozen_fingerprint(backbone) != fingerprint
        engine.destroy()
    if changed:
        raise RuntimeError("the frozen backbone changed during packed training: a ptdist bug, "
                           "please report it with the DeepSpeed config used")
    finish_together(world)
    return results


def _data_key(config: TrainConfig) -> tuple:
    """What a run's rows depend on."""
    return config.task, config.train_limit, config.eval_limit, config.data_dir


def _start_runs(todo: list[tuple[TrainConfig, RunPlan]], read: dict[tuple, RunData],
                backbone: Backbone, store: Store, device: torch.device,
                world: int) -> tuple[list[_Run], StackedAdamW]:
    """The pack's runs, each from its checkpoint or its init, on the rows ``read`` holds by
    `_data_key`, and their prompts as one tensor."""
    loaded: dict[tuple, RunData] = {}
    runs, inits, moments = [], [], []
    for row, (config, plan) in enumerate(todo):
        key = _data_key(config)
        if key not in loaded:
            loaded[key] = suited(read[key], config, plan.task, backbone)
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
                                     f"run {plan.prompt_id} ({plan.task.name}, seed {config.seed})")
        runs.append(_Run(config, plan, loaded[key], row, lr_schedule(config), tracker,
                         ds_config["train_micro_batch_size_per_gpu"], ds_config,
                         state.step if resumed is not None else None, []))
    prompts = StackedAdamW(torch.stack([p.float() for p in inits]).to(device))
    for row, exp_avg, exp_avg_sq, step in moments:
        prompts.restore(row, exp_avg.to(device), exp_avg_sq.to(device), step)
    return runs, prompts


def _train_runs(runs: list[_Run], prompts: StackedAdamW, backbone: Backbone, fingerprint: str,
                store: Store, rank: int, world: int, progress: RunProgress,
                t0: float) -> dict[str, TrainResult]:
    """Step the active runs together until every run is done; each is stored as soon as it is
    done, so a later failure cannot lose it. Runs that diverged are named in one error once the
    others are stored."""
    results: dict[str, TrainResult] = {}
    pack = [run.plan.prompt_id for run in runs]
    _evaluate(backbone, prompts, [r for r in runs if r.tracker.at_start], rank, world, t0)
    iteration = 0
    while True:
        for run in runs:
            if not run.active and run.diverged is None and run.plan.prompt_id not in results:
                results[run.plan.prompt_id] = _finish(run, backbone, fingerprint, store, rank,
                                                      world, t0, pack)
        active = [run for run in runs if run.active]
        if not active:
            diverged = [str(run.diverged) for run in runs if run.diverged is not None]
            if diverged:
                raise Diverged(" | ".join(diverged) + f" ({len(results)} other run(s) of its "
                               "pack finished and are stored)")
            return results
        _step(backbone, prompts, active, rank, world)
        iteration += 1
        progress.step(iteration, sum(r.losses[-1] for r in active) / len(active), active[0].lr)
        _evaluate(backbone, prompts, [r for r in active if r.eval_due and r.diverged is None],
                  rank, world, t0)


def _step(backbone: Backbone, prompts: StackedAdamW, runs: list[_Run], rank: int,
          world: int) -> None:
    """One optimizer step of every run in ``runs``: micro-batch by micro-batch, one forward and
    one loss for all runs; then the gradients averaged over ranks, clipped and applied."""
    device = prompts.weight.device
    accumulation = runs[0].ds_config["gradient_accumulation_steps"]
    mine = [rank_slice(global_batch(r.tracker.state.step, len(r.data.train), r.config.batch_size,
                                    r.config.seed), rank, world) for r in runs]
    losses = torch.zeros(len(prompts.steps), device=device)
    for part in range(accumulation):
        parts = [indices[part * run.micro:(part + 1) * run.micro]
                 for run, indices in zip(runs, mine)]
        batches, rows, weights = [], [], []
        for data, group in _by_data(runs, parts):
            batches.append({k: v.to(device) for k, v in backbone.collate(
                [data.train[i] for _, part_indices in group for i in part_indices],
                data.words).items()})
            for run, part_indices in group:
                rows += [run.row] * len(part_indices)
                # Each example weighs as in its run's mean loss, scaled as a separate run's
                # engine scales a micro-batch's loss under accumulation.
                weights += [1 / len(part_indices) / accumulation] * len(part_indices)
        index = torch.tensor(rows, device=device)
        per_example = backbone.losses(prompts.weight.index_select(0, index), batches)
        weighted = per_example * torch.tensor(weights, device=device)
        weighted.sum().backward()
        losses.index_add_(0, index, weighted.detach().float())
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(prompts.weight.grad)
        prompts.weight.grad /= world
    # Each run's loss: the mean of its micro-batches' mean losses over the global batch (the
    # same on every rank), as a separate run logs it.
    per_run = mean_over_ranks(losses.tolist())
    for run in runs:
        if not math.isfinite(per_run[run.row]):
            run.diverged = run.tracker.diverged("the loss")
    prompts.step([run.row_step() for run in runs])
    for run in runs:
        run.tracker.state.step += 1
        run.losses.append(per_run[run.row])


def _by_data(runs: list[_Run], parts: list[list[int]]) -> list[tuple[RunData, list]]:
    """The runs with this micro-batch's indices, grouped by the rows they read (runs of one
    task share them): one collate call per task."""
    groups: dict[int, tuple[RunData, list]] = {}
    for run, part in zip(runs, parts):
        groups.setdefault(id(run.data), (run.data, []))[1].append((run, part))
    return list(groups.values())


def _evaluate(backbone: Backbone, prompts: StackedAdamW, runs: list[_Run], rank: int, world: int,
              t0: float) -> None:
    """Evaluate ``runs``; the runs that score the same rows share each forward (their prompts
    are a batch dimension)."""
    groups: dict[tuple, list[_Run]] = {}
    for run in runs:
        c = run.config
        key = (c.task, c.eval_limit, c.data_dir, c.max_new_tokens, run.micro)
        groups.setdefault(key, []).append(run)
    for group in groups.values():
        head = group[0]
        metrics = evaluate_each(backbone, prompts.weight.detach()[[run.row for run in group]],
                                head.plan.task, head.data.eval, head.micro * 2 * len(group),
                                head.config.max_new_tokens, rank, world)
        for run, scores in zip(group, metrics):
            try:
                line = run.tracker.record(run.losses[-1] if run.losses else None, scores,
                                          time.time() - t0, run.checkpoint_tensors(prompts),
                                          [PROMPT_PARAM], rank == 0)
            except Diverged as exc:
                run.diverged = exc
                continue
            log.info(f"{run.tracker.label} {line}")


def _finish(run: _Run, backbone: Backbone, fingerprint: str, store: Store, rank: int,
            world: int, t0: float, pack: list[str]) -> TrainResult:
    """Store a run that has finished (its steps done, or stopped early), as `train` would."""
    fitted = Fitted(run.tracker.best, run.tracker.state, backbone, rank, world, run.ds_config,
                    fingerprint, run.resumed_from)
    return store_finished(run.config, run.plan, fitted, store, t0, packed_with=pack)
