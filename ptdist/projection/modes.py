"""Training a projector, in either of the paper's two modes.

distance  fit the projected source prompts to the target model's own prompts for the same
          tasks (mean squared error over every source x target prompt pair of a task). Only
          prompts are involved, so it runs on one device without the models.
task      tune the projector through the frozen target model on the data of its training
          tasks (the paper: several tasks of one type, tested on unseen tasks of that type),
          each task's rows behind the projection of the source model's best prompt for that
          task; every step takes a batch of each task. Each task's classes are read with its
          own label words, or (``verbalizer: unified``, the reference implementation's way)
          all tasks' with the union of their words. This is prompt tuning with a projector
          in the prompt's place: the same DeepSpeed recipe (`training.recipe.fit`), evaluation,
          checkpoints and resume, on the target model's resources; keep-best follows the mean
          of the tasks' primary metrics.
"""

from __future__ import annotations

import logging
import time

import torch

from ptdist import __version__
from ptdist.distributed.ds_config import load_ds_config
from ptdist.distributed.group import finish_together
from ptdist.errors import PtdistError
from ptdist.projection.config import ProjectorConfig
from ptdist.projection.projector import ProjectedPrompt, Projector, ProjectorShape
from ptdist.store import Store
from ptdist.store.manifests import ProjectorManifest, PromptManifest
from ptdist.store.prompts import best_per_task
from ptdist.tasks import get_task
from ptdist.training.recipe import fit, fit_metric

log = logging.getLogger(__name__)


def train_projector(config: ProjectorConfig, store: Store) -> ProjectorManifest:
    """Train the projector ``config`` describes and store it; returns its manifest. Idempotent:
    a stored projector is returned as it is."""
    config.require_prompts()
    if store.projectors.has(config.projector_id):
        return store.projectors.manifest(config.projector_id)
    t0 = time.time()
    sources = _prompts(store, config.source_prompts, config.source_model)
    if config.mode == "distance":
        targets = _prompts(store, config.target_prompts, config.target_model)
        weights, facts = _fit_distance(config, store, sources, targets)
    else:
        weights, facts = _fit_task(config, store, sources)
    manifest = ProjectorManifest(
        id=config.projector_id, config=config.to_dict(), source_model=config.source_model,
        target_model=config.target_model, mode=config.mode, tasks=list(config.tasks),
        wall_time_s=time.time() - t0, created=time.time(), ptdist_version=__version__,
        **facts)
    if weights is not None:  # None on the ranks other than 0 of a multi-process run
        store.projectors.put(weights, manifest)
    if config.mode == "task":
        finish_together(manifest.world_size)
    return manifest


def shape_of(manifest: ProjectorManifest) -> ProjectorShape:
    return ProjectorShape(**manifest.shape)


def initial_projector(shape: ProjectorShape, seed: int) -> Projector:
    """The projector before training: the same weights for the same seed, so an evaluation
    can compare a trained projector with where it started."""
    torch.manual_seed(seed)
    return Projector(shape)


def _prompts(store: Store, ids: tuple[str, ...], model: str) -> list[PromptManifest]:
    """The manifests of ``ids``; each must be ``model``'s."""
    missing = [i for i in ids if not store.prompts.has(i)]
    if missing:
        raise PtdistError(f"prompt(s) {', '.join(missing)} of '{model}' are not in store "
                          f"{store.root}; train them first (the pair scheduler does, from a "
                          "sweep spec)")
    manifests = [store.prompts.manifest(i) for i in ids]
    for m in manifests:
        if m.model != model:
            raise PtdistError(f"prompt {m.id} belongs to '{m.model}', not to '{model}'")
    return manifests


def _length(prompts: list[PromptManifest]) -> int:
    lengths = {m.prompt_length for m in prompts}
    if len(lengths) > 1:
        raise PtdistError(f"the prompts have lengths {sorted(lengths)}; a projector maps prompts "
                          "of one length L to prompts of the same L, so train every prompt it "
                          "uses with the same --prompt-length")
    return lengths.pop()


def _fit_distance(config: ProjectorConfig, store: Store, sources: list[PromptManifest],
                  targets: list[PromptManifest]) -> tuple[dict[str, torch.Tensor], dict]:
    length = _length(sources + targets)
    tensor = {m.id: store.prompts.tensor(m.id) for m in sources + targets}
    pairs = [(tensor[s.id], tensor[t.id]) for task in config.tasks for s in sources
             for t in targets if s.task == t.task == get_task(task).name]
    if not pairs:
        raise PtdistError(f"no task has prompts of both models among {', '.join(config.tasks)}")
    x = torch.stack([p[0] for p in pairs])
    y = torch.stack([p[1] for p in pairs])
    shape = ProjectorShape(config.variant, length, x.shape[-1], y.shape[-1], config.hidden)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    projector = initial_projector(shape, config.seed).to(device)
    x, y = x.to(device), y.to(device)
    optimizer = torch.optim.AdamW(projector.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    history = [{"step": 0, "distance": _distance(projector, x, y)}]
    log.info(f"[ptdist] projector {config.projector_id}: distance minimising "
             f"{config.source_model} -> {config.target_model} on {len(pairs)} prompt pairs, "
             f"{shape.parameters:,} parameters; initial distance {history[0]['distance']:.4f}")
    for step in range(1, config.steps + 1):
        pick = torch.randperm(len(x), generator=generator)[:config.batch_size].to(device)
        loss = torch.nn.functional.mse_loss(projector(x[pick]), y[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % config.eval_every == 0 or step == config.steps:
            history.append({"step": step, "distance": _distance(projector, x, y)})
            log.info(f"step {step}/{config.steps} distance {history[-1]['distance']:.4f}")
    facts = {"shape": shape.to_dict(), "pairs": len(pairs), "history": history,
             "initial_distance": history[0]["distance"], "distance": history[-1]["distance"],
             "prompts": sorted(config.source_prompts + config.target_prompts)}
    return {k: v.cpu() for k, v in projector.state_dict().items()}, facts


@torch.no_grad()
def _distance(projector: Projector, x: torch.Tensor, y: torch.Tensor) -> float:
    return torch.nn.functional.mse_loss(projector(x), y).item()


def _fit_task(config: ProjectorConfig, store: Store,
              sources: list[PromptManifest]) -> tuple[dict[str, torch.Tensor] | None, dict]:
    """Tune the projector through the target model on every training task at once, each
    task's data behind the projection of the source model's best prompt for that task."""
    tasks = [get_task(t) for t in config.tasks]
    best = best_per_task(sources, [t.name for t in tasks],
                         f"of '{config.source_model}' among the projector's source prompts")
    inputs = [best[t.name] for t in tasks]
    run = config.tuning_run(_length(inputs))
    tensors = torch.stack([store.prompts.tensor(m.id) for m in inputs])
    shapes: list[ProjectorShape] = []

    def build(backbone) -> ProjectedPrompt:
        shape = ProjectorShape(config.variant, tensors.shape[1], tensors.shape[-1],
                               backbone.hidden_size, config.hidden)
        shapes.append(shape)
        return ProjectedPrompt(initial_projector(shape, config.seed), tensors)

    ds_raw, _ = load_ds_config(config.ds_config)
    fitted = fit(run, tasks, ds_raw, store.layout.projector_run_dir(config.projector_id),
                 build, f"projector {config.projector_id} ({config.source_model} -> "
                        f"{config.target_model}, task tuning)",
                 unified=config.verbalizer == "unified")
    state = fitted.state
    facts = {"shape": shapes[0].to_dict(),
             "source_prompt": inputs[0].id if len(inputs) == 1 else None,
             "prompts": [m.id for m in inputs], "metric": fit_metric(tasks),
             "score": state.best_score, "best_step": state.best_step, "steps": state.step,
             "resumed_from": fitted.resumed_from, "history": state.history,
             "world_size": fitted.shard.world}
    if not fitted.shard.leads:
        return None, facts
    prefix = "projector."
    return {k[len(prefix):]: v for k, v in fitted.best.items()}, facts

