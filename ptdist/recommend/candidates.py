"""The source prompts a recommendation ranks for a model M and a task that has no prompt yet:

- ``store``: M's own prompts in the store (every seed; not TPT runs, not the target's);
- ``hub``: prompt files and PEFT adapter folders (``[TASK=]PATH``, read as `ptdist neurons
  embedding --prompts` reads them);
- ``projected``: for each projector in the store to M, the best prompt of each task of its
  source model, projected (its file written into the projector's folder, as `ptdist project
  eval` writes it, so a TPT run can start from it). A projector trained on the target task is
  left out: it has seen that task's prompts.

Each candidate knows how a TPT run starts from it (``init``) and what a TPT summary reports of
it (``id``, ``task``: `ptdist.transfer.tpt.SourcePrompt`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ptdist.errors import PtdistError
from ptdist.neurons.embedding import prompt_paths
from ptdist.projection.evaluation import project_prompts
from ptdist.store import Store
from ptdist.store.prompts import best_per_task, read_prompt_file
from ptdist.tasks import get_task, resolve_task
from ptdist.transfer.matrix import own_prompts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    id: str  # the store id, or the prompt file's path
    label: str  # short, unique among the candidates
    task: str  # the source task's name (a file's: TASK=, else its name)
    task_type: str | None  # as the registry declares it; None when a file names no task
    origin: str
    seed: int | None  # None: unknown (a file)
    tensor: torch.Tensor = field(repr=False, compare=False)

    @property
    def prompt_length(self) -> int:
        return self.tensor.shape[0]

    @property
    def init(self) -> str:
        """The init of a run that starts from this prompt."""
        return f"prompt:{self.id}"


def store_candidates(store: Store, model: str, target: str) -> list[Candidate]:
    return [Candidate(m.id, m.id, m.task, m.task_type, "store", m.seed,
                      store.prompts.tensor(m.id))
            for m in own_prompts(store.prompts.select(model)) if m.task != target]


def hub_candidates(specs: Sequence[str], stored: Mapping[str, str]) -> list[Candidate]:
    """``specs``' prompts; a prompt's type is its task's where the task is a built-in or one
    the store knows (``stored``: `PromptStore.task_files`)."""
    return [Candidate(str(path.resolve()), name, task, _declared_type(task, stored), "hub",
                      None, read_prompt_file(path)) for name, task, path in prompt_paths(specs)]


def _declared_type(task: str, stored: Mapping[str, str]) -> str | None:
    try:
        return get_task(resolve_task(task, stored=stored)).type
    except PtdistError:  # a file's name, or a task neither the registry nor the store knows
        return None


def projected_candidates(store: Store, model: str, target: str) -> list[Candidate]:
    out = []
    for projector in store.projectors.manifests():
        if projector.target_model != model:
            continue
        try:
            trained_on = {get_task(t).name for t in projector.tasks}
        except PtdistError as exc:  # a task file moved since: what it saw cannot be told
            log.warning("projector %s left out of the candidates: %s", projector.id, exc)
            continue
        if target in trained_on:
            continue
        prompts = [m for m in own_prompts(store.prompts.select(projector.source_model))
                   if m.task != target]
        best = best_per_task(prompts, sorted({m.task for m in prompts}), "")
        files = project_prompts(store, projector.id, best)
        origin = f"projected (from {projector.source_model}, projector {projector.id})"
        out += [Candidate(str(files[task]), f"{projector.source_model}:{task}@{projector.id[:8]}",
                          task, source.task_type, origin, source.seed,
                          read_prompt_file(files[task])) for task, source in best.items()]
    return out


def gather(store: Store, model: str, target: str, hub: Sequence[str] = (),
           projected: bool = True) -> list[Candidate]:
    """Every candidate for ``target`` (a task name) on ``model``; none is one error."""
    found = store_candidates(store, model, target) + \
        hub_candidates(hub, store.prompts.task_files()) + \
        (projected_candidates(store, model, target) if projected else [])
    if not found:
        raise PtdistError(f"no candidate source prompts for '{target}' on '{model}': the store "
                          f"{store.root} holds no prompt of the model for another task, and no "
                          "projector to it; train prompts of other tasks (`ptdist train`, a "
                          "study), or give prompt files or adapters with --hub")
    labels = [c.label for c in found]
    twice = sorted({name for name in labels if labels.count(name) > 1})
    if twice:
        raise PtdistError(f"candidate names must be unique; {', '.join(twice)} appear twice "
                          "(name a file's task with TASK=PATH, or rename the files)")
    return found
