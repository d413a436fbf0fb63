"""Which stored prompt stands for a (model, task): the best-scoring one, or a named one."""

from __future__ import annotations

from collections.abc import Collection

from ptdist.errors import PtdistError
from ptdist.store.prompts import PromptStore
from ptdist.tasks import get_task


def best_prompts(store: PromptStore, model: str, tasks: list[str],
                 among: Collection[str] | None = None) -> dict[str, dict]:
    """``{task name: manifest}`` of the best-scoring prompt of ``model`` for each task (task
    names or YAML paths), from the whole store or only ``among`` these prompt ids (a study's
    own runs). Every task without a prompt is named in one error."""
    names = [get_task(t).name for t in tasks]
    candidates: dict[str, list[dict]] = {}
    for m in store.manifests():
        if m["model"] == model and m["task"] in names and (among is None or m["id"] in among):
            candidates.setdefault(m["task"], []).append(m)
    best = {task: best_of(rows) for task, rows in candidates.items()}
    missing = [n for n in names if n not in best]
    if missing:
        raise PtdistError(
            f"no prompt of model '{model}' in store {store.root} for task(s): "
            f"{', '.join(missing)}; train them first (`ptdist train --model {model} --task "
            f"{missing[0]}` or a sweep), or leave them out")
    return {n: best[n] for n in names}


def best_of(manifests: list[dict]) -> dict:
    """The best-scoring prompt; ties go to the larger id, so every caller picks the same one
    whatever order the store lists them in."""
    return max(manifests, key=lambda m: (m["score"], m["id"]))


def resolve_source(store: PromptStore, model: str, ref: str,
                   among: Collection[str] | None = None) -> dict:
    """A source prompt given as a store id, or as a task (its best prompt for ``model``,
    ``among`` these prompt ids if given)."""
    if store.has(ref):
        manifest = store.manifest(ref)
        if manifest["model"] != model:
            raise PtdistError(f"prompt {ref} was trained on '{manifest['model']}', not '{model}'; "
                              "a prompt transfers across models only through a projector")
        return manifest
    return best_prompts(store, model, [ref], among)[get_task(ref).name]
