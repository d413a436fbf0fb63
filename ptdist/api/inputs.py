"""What the API's functions resolve alike: the store they read and write, where their jobs
run, the tasks they are given, a model's prompts on tasks, the placement of a frozen model,
and paths as jobs in other working directories see them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ptdist.distributed.ds_config import load_ds_config
from ptdist.errors import PtdistError
from ptdist.orchestration.spec.sweep_spec import Resources
from ptdist.store import Store
from ptdist.store.manifests import PromptManifest
from ptdist.store.prompts import by_task
from ptdist.tasks import get_task, resolve_task


def open_store(store: Store | str | os.PathLike | None, writes: bool = True) -> Store:
    """``store`` as a `Store` (None: $PTDIST_STORE, else ./store); for a function that
    ``writes`` to it, one this process can write, checked before any work starts."""
    opened = store if isinstance(store, Store) else Store(store)
    if writes:
        opened.require_writable()
    return opened


def store_path(store: Store | str | os.PathLike | None) -> str | None:
    """The root of ``store`` as a spec's ``storage_path`` override (None: the spec's own)."""
    if store is None:
        return None
    return str(store.root if isinstance(store, Store) else store)


def absolute(path: str | os.PathLike | None) -> str | None:
    """``path`` as jobs in other working directories (Ray workers) see it."""
    return None if path is None else str(Path(path).expanduser().resolve())


def tasks_in(tasks: Sequence[str], store: Store | None) -> list[str]:
    """``tasks`` as runs carry them, each checked now (`ptdist.tasks.resolve_task`): a built-in
    name, a task YAML path (made absolute), or, given the ``store``, the name of a task defined
    in YAML that the store has prompts of. Every function that takes tasks resolves them here,
    so a task written once in YAML is then known by its name wherever a task name is."""
    stored = store.prompts.task_files() if store is not None else None
    return [resolve_task(t, stored=stored) for t in tasks]


def prompts_of(store: Store, model: str, tasks: Sequence[str]) -> list[PromptManifest]:
    """Every stored prompt of ``model`` on ``tasks`` (as `tasks_in` resolves them), each task
    having at least one (else one error naming those without)."""
    names = [get_task(t).name for t in tasks]
    found = by_task(store.prompts.select(model, names), names,
                    f"of model '{model}' in store {store.root}")
    return [m for mine in found.values() for m in mine]


def frozen_model(resources: Resources, ds_config: str | None) -> None:
    """Stop before any job starts unless ``resources`` and ``ds_config`` place a frozen model:
    whole in one process, or partitioned over ``resources.workers`` processes under a
    DeepSpeed config that exists."""
    if resources.workers < 1:
        raise PtdistError(f"a model runs in at least one process (resources.workers is "
                          f"{resources.workers})")
    if resources.workers > 1 and ds_config is None:
        raise PtdistError(f"a model partitioned over {resources.workers} workers needs the "
                          "DeepSpeed config it is partitioned under: set the settings' "
                          "ds_config (e.g. 'zero3')")
    if ds_config is not None:
        load_ds_config(ds_config)
