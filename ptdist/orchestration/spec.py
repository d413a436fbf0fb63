"""A sweep spec (YAML): models x tasks x seeds x prompt inits, with each model's resources,
DeepSpeed config and budgets, and one storage path. Format and examples: docs/sweeps.md.

The whole spec is validated when it is read, before anything is scheduled: an unknown key,
task, model, init or DeepSpeed config, a precision that contradicts the DeepSpeed config, or a
batch that does not split over a run's processes stops with one message naming it.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from ptdist.backbones import PRESETS, InitSpec, resolve_model_path
from ptdist.errors import PtdistError
from ptdist.tasks import get_task
from ptdist.training.config import TrainConfig
from ptdist.training.engine import deepspeed_config, load_ds_config, precision_of

TOP_KEYS = ("name", "storage_path", "data_dir", "cluster", "tasks", "seeds", "inits", "train",
            "models", "max_concurrent", "max_failures", "pack")
PATH_KEYS = ("storage_path", "data_dir", "cluster")
MODEL_KEYS = ("resources", "ds_config", "precision", "train", "tasks", "pack")
RESOURCE_KEYS = ("workers", "gpus", "cpus")
# Set per run by the sweep itself, so not allowed under `train:`.
SWEPT_FIELDS = ("model", "task", "seed", "init", "ds_config", "data_dir")
TRAIN_KEYS = tuple(f.name for f in fields(TrainConfig) if f.name not in SWEPT_FIELDS)
TASK_PLACEHOLDER = "{task}"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class Resources:
    """What one run of a model needs. ``workers`` processes (Ray Train workers when more than
    one), ``gpus`` in all, spread evenly over them, and ``cpus`` for each worker."""

    workers: int = 1
    gpus: int = 0
    cpus: float = 1.0

    def per_worker(self) -> dict[str, float]:
        bundle = {"CPU": float(self.cpus)}
        if self.gpus:
            bundle["GPU"] = self.gpus / self.workers
        return bundle


@dataclass(frozen=True)
class ModelEntry:
    name: str
    resources: Resources
    ds_config: str  # as the runs will look it up: a ds_configs/ name or an absolute path
    train: dict[str, Any]
    ds_settings: dict[str, Any]  # the DeepSpeed config's content, read once when validated
    tasks: tuple[str, ...] | None = None  # a subset of the spec's tasks (None: all of them)
    pack: int = 1  # runs trained together on one copy of the backbone (ptdist.training.packed)


@dataclass(frozen=True)
class RunSpec:
    """One prompt-tuning run of a sweep: its training config and the resources it runs on."""

    config: TrainConfig
    resources: Resources
    pack: int = 1  # how many runs of its model one job may train together

    @property
    def label(self) -> str:
        c = self.config
        task = Path(c.task).stem if c.task.endswith((".yaml", ".yml")) else c.task
        return f"{c.model}/{task}/seed{c.seed}/{c.init}"


@dataclass(frozen=True)
class SweepSpec:
    name: str
    storage_path: str
    data_dir: str | None
    cluster: str | None  # a Ray cluster config whose node types bound what a run may ask for
    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    inits: tuple[str, ...]
    train: dict[str, Any]
    models: tuple[ModelEntry, ...]
    max_concurrent: int | None
    max_failures: int

    def runs(self) -> list[RunSpec]:
        """Every (model, task, seed, init) in the order the spec lists them."""
        return [RunSpec(TrainConfig(model=m.name, task=task, seed=seed, init=init_for(init, task),
                                    ds_config=m.ds_config, data_dir=self.data_dir,
                                    **{**self.train, **m.train}), m.resources, m.pack)
                for m in self.models for task in self.tasks_of(m) for seed in self.seeds
                for init in self.inits]

    def tasks_of(self, model: ModelEntry) -> tuple[str, ...]:
        """The spec's tasks that ``model`` runs, in the spec's order."""
        return self.tasks if model.tasks is None else \
            tuple(t for t in self.tasks if _task_ref_name(t) in model.tasks)


def init_for(init: str, task: str) -> str:
    """An init with ``{task}`` in it names a prompt per task (e.g. the projected prompt files of
    TPT_model, ``prompt:/store/projectors/ID/projected/{task}.safetensors``): the run's task
    name goes there."""
    return init.replace(TASK_PLACEHOLDER, get_task(task).name)


def load_spec(path: str | os.PathLike, **overrides: Any) -> SweepSpec:
    """Read and validate a sweep spec. Relative paths in the file are relative to the file's
    folder. ``overrides`` (``storage_path``, ``data_dir``, ``cluster``, ``max_concurrent``),
    when not None, replace the file's values; their relative paths are relative to the
    working directory."""
    path = Path(path)
    raw = read_yaml(path, "sweep spec", TOP_KEYS)
    raw.pop("stages", None)  # a study (docs/replicate.md) is a sweep spec plus its stages
    return spec_from_raw(raw, path, "sweep spec", **overrides)


def read_yaml(path: Path, what: str, keys: tuple[str, ...]) -> dict:
    """A YAML mapping, with one clear error for a missing file, bad YAML or another shape."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PtdistError(f"{what} {path} not found") from None
    except yaml.YAMLError as exc:
        raise PtdistError(f"{what} {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise PtdistError(f"{what} {path} must be a mapping with keys: {', '.join(keys)}")
    return raw


def spec_from_raw(raw: dict, path: Path, what: str, **overrides: Any) -> SweepSpec:
    """The sweep spec in ``raw``, read from the ``what`` file ``path`` (see `load_spec`)."""
    raw = dict(raw)
    for key in PATH_KEYS:
        if raw.get(key) is not None and "://" not in str(raw[key]):
            raw[key] = str(path.parent.resolve() / Path(str(raw[key])).expanduser())
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return parse_spec(raw, default_name=path.stem, base=path.parent)
    except PtdistError as exc:
        raise PtdistError(f"{what} {path}: {exc}") from None


def parse_spec(raw: dict, default_name: str = "sweep", base: Path | None = None) -> SweepSpec:
    """Validate a spec given as data. Relative task-file and DeepSpeed-config paths are
    relative to ``base`` (the spec's folder; default the working directory)."""
    check_keys(raw, TOP_KEYS, "top level")
    for key in ("storage_path", "tasks", "models"):
        if not raw.get(key):
            raise PtdistError(f"'{key}' is required")
    train = dict(raw.get("train") or {})
    check_keys(train, TRAIN_KEYS, "train")
    models = raw["models"]
    if not isinstance(models, dict):
        raise PtdistError("'models' must map model names to their settings, e.g. "
                          "{roberta-base: {resources: {gpus: 1}, ds_config: zero0}}")
    spec = SweepSpec(
        name=str(raw.get("name") or default_name),
        storage_path=_storage_path(raw["storage_path"]),
        data_dir=_abs(raw.get("data_dir")),
        cluster=_abs(raw.get("cluster")),
        tasks=tuple(task_ref(t, base or Path.cwd()) for t in _str_list(raw["tasks"], "tasks")),
        seeds=tuple(_int_list(raw.get("seeds", [0]), "seeds")),
        inits=tuple(_str_list(raw.get("inits", ["random"]), "inits")),
        train=train,
        models=tuple(_model_entry(name, entry or {}, base or Path.cwd(),
                                  _positive(raw.get("pack", 1), "pack"))
                     for name, entry in models.items()),
        max_concurrent=_positive_or_none(raw.get("max_concurrent"), "max_concurrent"),
        max_failures=_non_negative(raw.get("max_failures", 3), "max_failures"),
    )
    _validate(spec)
    return spec


def _validate(spec: SweepSpec) -> None:
    for task in spec.tasks:
        get_task(task)
    known = {_task_ref_name(t) for t in spec.tasks}
    for model in spec.models:
        outside = sorted(set(model.tasks or ()) - known)
        if outside:
            raise PtdistError(f"models.{model.name}.tasks: {', '.join(outside)} not among the "
                              f"spec's tasks ({', '.join(sorted(known))}); a model runs a "
                              "subset of them")
    for init in spec.inits:
        InitSpec.parse(init)
    for model in spec.models:
        try:
            run = replace(spec, models=(model,)).runs()[0].config
        except PtdistError as exc:
            raise PtdistError(f"model {model.name}: {exc}") from None
        try:
            deepspeed_config(model.ds_settings, run, model.resources.workers)
        except PtdistError as exc:
            raise PtdistError(f"model {model.name} ({model.resources.workers} worker(s), "
                              f"ds_config {model.ds_config}): {exc}") from None


def _model_entry(name: str, entry: dict, base: Path, pack: int) -> ModelEntry:
    if not isinstance(entry, dict):
        raise PtdistError(f"models.{name} must be a mapping with keys: {', '.join(MODEL_KEYS)}")
    check_keys(entry, MODEL_KEYS, f"models.{name}")
    if name.startswith(("./", "../")):  # a model folder beside the spec, like its data paths
        name = str((base / name).resolve())
    _check_model_name(name)
    resources = dict(entry.get("resources") or {})
    check_keys(resources, RESOURCE_KEYS, f"models.{name}.resources")
    res = Resources(workers=int(resources.get("workers", max(1, int(resources.get("gpus", 0))))),
                    gpus=int(resources.get("gpus", 0)), cpus=float(resources.get("cpus", 1)))
    if float(resources.get("gpus", 0)) != res.gpus:
        raise PtdistError(f"models.{name}.resources.gpus must be a whole number of GPUs per run "
                          f"(got {resources['gpus']})")
    if res.workers < 1 or res.gpus < 0 or res.cpus < 0:
        raise PtdistError(f"models.{name}.resources: workers must be >= 1 and gpus, cpus >= 0 "
                          f"(got {resources})")
    if res.gpus and res.gpus % res.workers:
        raise PtdistError(f"models.{name}.resources: {res.gpus} GPUs do not split evenly over "
                          f"{res.workers} workers; use a multiple of the worker count")
    ds_config = str(entry.get("ds_config", "zero0"))
    if Path(ds_config).suffix:  # a JSON file rather than a ds_configs/ name
        ds_config = str((base / ds_config).resolve())
    raw_ds, _ = load_ds_config(ds_config)
    precision = precision_of(raw_ds)
    wanted = entry.get("precision")
    if wanted is not None and wanted != precision:
        raise PtdistError(f"models.{name}: precision '{wanted}' but ds_config '{ds_config}' runs "
                          f"{precision}; pick a ds_config that matches (e.g. zero2_bf16 for bf16, "
                          "zero2 for fp32) or drop 'precision'")
    train = dict(entry.get("train") or {})
    check_keys(train, TRAIN_KEYS, f"models.{name}.train")
    tasks = entry.get("tasks")
    return ModelEntry(name, res, ds_config, train, raw_ds,
                      None if tasks is None else tuple(
                          _task_ref_name(task_ref(t, base))
                          for t in _str_list(tasks, f"models.{name}.tasks")),
                      _positive(entry.get("pack", pack), f"models.{name}.pack"))


def _check_model_name(name: str) -> None:
    """A preset, package path or local folder must exist; anything else must look like a hub
    id (checked when a run loads it, since the driver may have no hub access). A near-miss of
    a preset name is a typo, not a hub id."""
    if os.path.isabs(name) and not os.path.isdir(name):
        raise PtdistError(f"model folder {name} does not exist; prepare it first (the "
                          "quickstart's converted model: python examples/prepare_models.py "
                          "models) or fix the path")
    resolve_model_path(name)
    if name in PRESETS or os.path.isdir(name) or name.startswith("pkg:"):
        return
    close = difflib.get_close_matches(name, PRESETS, n=1, cutoff=0.8)
    if close:
        raise PtdistError(f"unknown model '{name}': did you mean the preset '{close[0]}'?")
    if not _HUB_ID.match(name):
        raise PtdistError(f"unknown model '{name}': not a preset ({', '.join(PRESETS)}), a "
                          "local folder, pkg:PACKAGE/path, or a hub id like roberta-base")


def check_keys(mapping: dict, allowed: tuple[str, ...], where: str) -> None:
    if not isinstance(mapping, dict):
        raise PtdistError(f"{where} must be a mapping with keys: {', '.join(allowed)}")
    for key in mapping:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            raise PtdistError(f"unknown key '{key}' in {where}"
                              + (f" (did you mean '{hint[0]}'?)" if hint else "")
                              + f"; allowed: {', '.join(allowed)}")


def _storage_path(value: Any) -> str:
    text = str(value)
    if "://" in text:
        raise PtdistError(
            f"storage_path '{text}': the prompt store must be a folder that every node mounts "
            "(NFS, EFS, Filestore, or an S3 bucket mounted with mountpoint-s3/s3fs); give that "
            "mount's path, as cluster.yaml sets up under /mnt/ptdist")
    return str(Path(text).expanduser().resolve())


def task_ref(task: str, base: Path) -> str:
    """A task YAML path made absolute (runs execute in other working directories); a
    registered name unchanged."""
    return str((base / task).resolve()) if task.endswith((".yaml", ".yml")) else task


def _task_ref_name(task: str) -> str:
    return get_task(task).name


def _abs(value: Any) -> str | None:
    return None if value is None else str(Path(str(value)).expanduser().resolve())


def _str_list(value: Any, key: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        raise PtdistError(f"'{key}' must be a list of names (got {value!r})")
    return items


def _int_list(value: Any, key: str) -> list[int]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise PtdistError(f"'{key}' must be a list of integers (got {value!r})")
    return items


def _positive_or_none(value: Any, key: str) -> int | None:
    return None if value is None else _positive(value, key)


def _positive(value: Any, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PtdistError(f"'{key}' must be a positive integer (got {value!r})")
    return value


def _non_negative(value: Any, key: str) -> int:
    if not isinstance(value, int) or value < 0:
        raise PtdistError(f"'{key}' must be a non-negative integer (got {value!r})")
    return value
