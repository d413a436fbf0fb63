"""A sweep spec (YAML): models x tasks x seeds x prompt inits, with each model's resources,
DeepSpeed config and budgets, and one storage path. Format and examples: docs/sweeps.md.

The whole spec is validated when it is read, before anything is scheduled: an unknown key, a
value of the wrong type, an unknown task, model, init or DeepSpeed config, a precision that
contradicts the DeepSpeed config, or a batch that does not split over a run's processes stops
with one message naming it.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from ptdist.backbones import CONVERTED, PRESETS, parse_init, resolve_model_path
from ptdist.distributed.ds_config import load_ds_config, precision_of, zero_stage
from ptdist.errors import PtdistError
from ptdist.orchestration.execution.failures import FailurePolicy
from ptdist.orchestration.spec.spec_presets import SpecFile, spec_file, written_here
from ptdist.store import Store
from ptdist.store.layout import is_plain_name, segment
from ptdist.tasks import get_task, task_ref
from ptdist.training.config import TrainConfig
from ptdist.training.engine import deepspeed_config
from ptdist.training.hardware import GPU_MEMORY_RESOURCE
from ptdist.validation import (Strict, Text, as_written, dataclass_shape, located, one_or_more,
                               read_yaml, rule, validate)

PATH_KEYS = ("storage_path", "data_dir", "cluster", "ray_storage")
# Set per run by the sweep itself, so not allowed under `train:`.
SWEPT_FIELDS = ("model", "task", "seed", "init", "ds_config", "data_dir")
TASK_PLACEHOLDER = "{task}"
COORDINATOR_CPU = 0.05
ACCELERATOR_SHARE = 0.001
DEFAULT_START_TIMEOUT_S = 900.0  # an autoscaled GPU node takes minutes to boot
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

Names = one_or_more(Text)
PlainName = Annotated[str, rule(is_plain_name, "must be one plain name (letters, digits, '.', "
                                "'_' or '-', starting with a letter or digit, at most 100 "
                                "characters): it names files in the store")]
Seeds = one_or_more(int)
TrainSettings = as_written(dataclass_shape(TrainConfig, exclude=SWEPT_FIELDS))


@dataclass(frozen=True)
class Resources:
    """What one run of a model needs. ``workers`` processes (Ray Train workers when more than
    one, all on one node), ``gpus`` in all, spread evenly over them, ``cpus`` for each worker,
    and, to pin a model to a kind of node, a GPU type (Ray's ``accelerator_type:<T>``
    resource), a GPU memory (``gpu_memory_gb:<N>``, which node types declare) or custom
    resources per worker. A worker group that finds no node with room for
    it within ``start_timeout_s`` fails its attempt. A spec's ``resources:`` are these fields
    (`_Resources`); the descriptions end the errors about their values."""

    workers: PositiveInt = 1
    gpus: NonNegativeInt = field(default=0, metadata={
        "description": "GPUs per run in all, a whole number that splits evenly over its workers"})
    cpus: NonNegativeFloat = field(default=1.0, metadata={
        "description": "CPUs per worker, e.g. cpus: 8"})
    accelerator_type: Text | None = field(default=None, metadata={
        "description": "the GPU type every worker needs, as Ray names it (A100, H100, L40S...)"})
    gpu_memory_gb: PositiveInt | None = field(default=None, metadata={
        "description": "the GPU memory every worker needs, e.g. 80: only node types that "
                       "declare gpu_memory_gb:80 (an A100 is 40 or 80 GB)"})
    custom: tuple[tuple[str, float], ...] = ()
    start_timeout_s: PositiveFloat = field(default=DEFAULT_START_TIMEOUT_S, metadata={
        "description": "seconds a worker group may wait for a node with room for all its "
                       "workers before its job fails"})

    def __post_init__(self) -> None:
        # A job carries its resources as data (a mapping or pairs): kept sorted and hashable,
        # since runs are packed by equal resources.
        object.__setattr__(self, "custom",
                           tuple(sorted((str(k), float(v)) for k, v in dict(self.custom).items())))

    def per_worker(self) -> dict[str, float]:
        bundle = {"CPU": float(self.cpus)}
        if self.gpus:
            bundle["GPU"] = self.gpus / self.workers
        if self.accelerator_type:
            # Ray's convention: a node with that GPU offers 1 of the resource; each worker asks
            # a sliver, so all of a node's workers fit.
            bundle[f"accelerator_type:{self.accelerator_type}"] = ACCELERATOR_SHARE
        if self.gpu_memory_gb:
            bundle[f"{GPU_MEMORY_RESOURCE}:{self.gpu_memory_gb}"] = ACCELERATOR_SHARE
        bundle.update(self.custom)
        return bundle

    def group(self) -> dict[str, float]:
        """Everything the workers hold together, on one node."""
        return {k: v * self.workers for k, v in self.per_worker().items()}

    def worker_group(self) -> dict[str, float] | None:
        """What a job's worker group holds, or None for a job of one worker (its bundle)."""
        return self.group() if self.workers > 1 else None

    def job_bundle(self) -> dict[str, float]:
        """What the process that runs a job reserves: its one worker's bundle, or, when the job
        starts a worker group (which reserves the real resources), a coordinator's sliver of a
        CPU (Ray needs a non-empty bundle)."""
        return self.per_worker() if self.workers == 1 else {"CPU": COORDINATOR_CPU}

    def one_device(self) -> Resources:
        """One of these workers with at most one GPU, pinned alike: what a job that evaluates
        the model on one device asks."""
        return replace(self, workers=1, gpus=min(self.gpus, 1))


# A spec's resources: Resources' fields, but that a spec may leave the workers out (one per GPU,
# `_model_entry` resolves them) and writes custom resources as a mapping.
_Resources = dataclass_shape(Resources, written={
    "workers": (PositiveInt | None, Field(None, description="processes per run (default: one "
                                                            "per GPU)")),
    "custom": (dict[Text, PositiveFloat] | None, Field(
        None, description="custom Ray resources per worker, e.g. {disk_nvme: 1}; node types "
                          "declare them in cluster.yaml"))})


# Runs of a model one job trains together: a count, or "auto" (`runs.pack_runs` decides).
PackSize = Annotated[int | str, rule(lambda v: v == "auto" or (isinstance(v, int) and v >= 1),
                                     "must be a positive integer or 'auto'")]


class _Model(Strict):
    resources: _Resources | None = None
    ds_config: Text = "zero0"
    precision: Text | None = None
    train: TrainSettings | None = None
    tasks: Names | None = None
    pack: PackSize | None = None


class _Spec(Strict):
    name: PlainName | None = None
    storage_path: Text = Field(description="the prompt store: a folder every node mounts")
    ray_storage: Text | None = Field(None, description="where Ray Tune's and Train's records "
                                                       "go, e.g. s3://bucket/ptdist-ray")
    data_dir: Text | None = None
    cluster: Text | None = None
    tasks: Names = Field(description="registered task names or task YAML files")
    seeds: Seeds = [0]
    inits: Names = ["random"]
    train: TrainSettings | None = None
    models: dict[Text, _Model | None] = Field(
        min_length=1, description="map model names to their settings, e.g. "
                                  "{roberta-base: {resources: {gpus: 1}, ds_config: zero0}}")
    max_concurrent: PositiveInt | None = None
    max_failures: NonNegativeInt = FailurePolicy.max_failures
    pack: PackSize = "auto"


TOP_KEYS = tuple(_Spec.model_fields)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    resources: Resources
    ds_config: str  # as the runs will look it up: a ds_configs/ name or an absolute path
    train: dict[str, Any]
    ds_settings: dict[str, Any]  # the DeepSpeed config's content, read once when validated
    tasks: tuple[str, ...] | None = None  # a subset of the spec's tasks (None: all of them)
    # Runs trained together on one copy of the backbone (ptdist.training.packed); None: as many
    # as `ptdist.orchestration.jobs.runs.pack_runs` finds faster (AUTO_PACK).
    pack: int | None = None

    def inference(self) -> tuple[Resources, str | None]:
        """What a job that runs this model frozen (matrix, capture, projector evaluation)
        holds, and the DeepSpeed config it partitions the model under. A ZeRO-3 group (its
        weights do not fit one GPU, `ptdist.training.memory`) gets a group of the same shape,
        the model sharded over it; any other model runs whole on one device (None)."""
        if self.resources.workers > 1 and zero_stage(self.ds_settings) == 3:
            return self.resources, self.ds_config
        return self.resources.one_device(), None


@dataclass(frozen=True)
class RunSpec:
    """One prompt-tuning run of a sweep: its training config and the resources it runs on."""

    config: TrainConfig
    resources: Resources
    pack: int | None = None  # how many runs of its model one job may train together (None: auto)

    @property
    def label(self) -> str:
        c = self.config
        task = Path(c.task).stem if c.task.endswith((".yaml", ".yml")) else c.task
        return f"{c.model}/{task}/seed{c.seed}/{c.init}"


@dataclass(frozen=True)
class SweepSpec:
    name: str
    storage_path: str
    ray_storage: str | None  # a URI or folder for Ray's own records (None: under the store)
    data_dir: str | None
    cluster: str | None  # a Ray cluster config whose node types bound what a run may ask for
    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    inits: tuple[str, ...]
    train: dict[str, Any]
    models: tuple[ModelEntry, ...]
    max_concurrent: int | None
    max_failures: int
    # Tasks whose runs train all their steps whatever their early-stopping settings: a study's
    # TPT targets, whose whole curves TPT compares (`ptdist.orchestration.spec.study_spec`).
    full_curves: tuple[str, ...] = ()

    def runs(self) -> list[RunSpec]:
        """Every (model, task, seed, init) in the order the spec lists them."""
        return [RunSpec(self._config(m, task, seed, init), m.resources, m.pack)
                for m in self.models for task in self.tasks_of(m) for seed in self.seeds
                for init in self.inits]

    def _config(self, model: ModelEntry, task: str, seed: int, init: str) -> TrainConfig:
        config = TrainConfig(model=model.name, task=task, seed=seed,
                             init=parse_init(init_for(init, task)),
                             ds_config=model.ds_config, data_dir=self.data_dir,
                             **{**self.train, **model.train})
        return config.to_the_end() if get_task(task).name in self.full_curves else config

    def store(self) -> Store:
        return Store(self.storage_path, self.ray_storage)

    def tasks_of(self, model: ModelEntry) -> tuple[str, ...]:
        """The spec's tasks that ``model`` runs, in the spec's order."""
        return self.tasks if model.tasks is None else \
            tuple(t for t in self.tasks if _task_ref_name(t) in model.tasks)


def init_for(init: str, task: str) -> str:
    """An init with ``{task}`` in it names a prompt per task (e.g. the projected prompt files of
    TPT_model, ``prompt:/store/projectors/ID/projected/{task}.safetensors``): the run's task
    name goes there."""
    return init.replace(TASK_PLACEHOLDER, get_task(task).name)


def load_spec(source: str | os.PathLike | SpecFile, **overrides: Any) -> SweepSpec:
    """Read and validate a sweep spec: a file, or a preset by name (`spec_presets.spec_file`).
    Relative paths in the file are relative to the file's folder, but those a preset writes to
    (`spec_presets.written_here`). ``overrides`` (``storage_path``, ``data_dir``, ``cluster``,
    ``max_concurrent``, ``pack``), when not None, replace the file's values (``pack`` every
    model's too); their relative paths are relative to the working directory."""
    source = spec_file(source)
    raw = read_yaml(source.path, "sweep spec", TOP_KEYS)
    if "stages" in raw:  # a study (docs/replicate.md): its runs as its prompt stage plans them
        from ptdist.orchestration.spec.study_spec import load_study

        return load_study(source, **overrides).spec
    return spec_from_raw(raw, source, "sweep spec", **overrides)


def spec_from_raw(raw: dict, source: SpecFile, what: str, **overrides: Any) -> SweepSpec:
    """The sweep spec in ``raw``, read from the ``what`` file ``source`` (see `load_spec`)."""
    path = source.path
    raw = dict(raw, **(written_here(raw) if source.preset else {}))
    for key in PATH_KEYS:
        if isinstance(raw.get(key), str) and "://" not in raw[key]:
            raw[key] = str(path.parent.resolve() / Path(raw[key]).expanduser())
    raw.update({k: v for k, v in overrides.items() if v is not None})
    if overrides.get("pack") is not None:  # the command line's packing holds for every model
        raw["models"] = {name: {k: v for k, v in entry.items() if k != "pack"}
                         if isinstance(entry, dict) else entry
                         for name, entry in (raw.get("models") or {}).items()}
    with located(f"{what} {path}"):
        return parse_spec(raw, default_name=segment(path.stem), base=path.parent)


def parse_spec(raw: dict, default_name: str = "sweep", base: Path | None = None) -> SweepSpec:
    """Validate a spec given as data. Relative task-file and DeepSpeed-config paths are
    relative to ``base`` (the spec's folder; default the working directory)."""
    shape = validate(_Spec, raw)
    base = base or Path.cwd()
    spec = SweepSpec(
        name=shape.name or default_name,
        storage_path=_storage_path(shape.storage_path),
        ray_storage=shape.ray_storage,
        data_dir=_abs(shape.data_dir),
        cluster=_abs(shape.cluster),
        tasks=tuple(task_ref(t, base) for t in shape.tasks),
        seeds=tuple(shape.seeds),
        inits=tuple(shape.inits),
        train=shape.train or {},
        models=tuple(_model_entry(name, entry or _Model(), base, shape.pack)
                     for name, entry in shape.models.items()),
        max_concurrent=shape.max_concurrent,
        max_failures=shape.max_failures,
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
        parse_init(init)
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


def _model_entry(name: str, entry: _Model, base: Path, pack: int | str) -> ModelEntry:
    if name.startswith(("./", "../")):  # a model folder beside the spec, like its data paths
        name = str((base / name).resolve())
    _check_model_name(name)
    given = entry.resources or _Resources()
    res = Resources(**{**dict(given), "workers": given.workers or max(1, given.gpus),
                       "custom": given.custom or ()})
    if res.gpus % res.workers:
        raise PtdistError(f"models.{name}.resources: {res.gpus} GPUs do not split evenly over "
                          f"{res.workers} workers; use a multiple of the worker count")
    ds_config = entry.ds_config
    if Path(ds_config).suffix:  # a JSON file rather than a ds_configs/ name
        ds_config = str((base / ds_config).resolve())
    raw_ds, _ = load_ds_config(ds_config)
    precision = precision_of(raw_ds)
    if entry.precision is not None and entry.precision != precision:
        raise PtdistError(f"models.{name}: precision '{entry.precision}' but ds_config "
                          f"'{ds_config}' runs {precision}; pick a ds_config that matches (e.g. "
                          "zero2_bf16 for bf16, zero2 for fp32) or drop 'precision'")
    tasks = None if entry.tasks is None else \
        tuple(_task_ref_name(task_ref(t, base)) for t in entry.tasks)
    chosen = entry.pack or pack
    return ModelEntry(name, res, ds_config, entry.train or {}, raw_ds, tasks,
                      None if chosen == "auto" else chosen)


def _check_model_name(name: str) -> None:
    """A preset and a converted model are known by name; a package path or local folder must
    exist; anything else must look like a hub id (checked when a run loads it, since the driver
    may have no hub access). A near-miss of a preset name is a typo, not a hub id."""
    if os.path.isabs(name) and not os.path.isdir(name):
        raise PtdistError(f"model folder {name} does not exist; fix the path")
    if name in PRESETS or name in CONVERTED:
        return  # built or converted when a run first loads it
    resolve_model_path(name)
    if os.path.isdir(name) or name.startswith("pkg:"):
        return
    close = difflib.get_close_matches(name, PRESETS, n=1, cutoff=0.8)
    if close:
        raise PtdistError(f"unknown model '{name}': did you mean the preset '{close[0]}'?")
    if not _HUB_ID.match(name):
        raise PtdistError(f"unknown model '{name}': not a preset ({', '.join(PRESETS)}), a "
                          "local folder, pkg:PACKAGE/path, or a hub id like roberta-base")


def _storage_path(text: str) -> str:
    if "://" in text:
        raise PtdistError(
            f"storage_path '{text}': the prompt store must be a POSIX folder that every node "
            "mounts (EFS, FSx, Filestore, NFS), as cluster.yaml sets up under /mnt/ptdist: it "
            "writes every file atomically by renaming it, which object stores and their FUSE "
            "mounts (mountpoint-s3, s3fs) do not offer. To keep Ray Tune's and Train's records "
            "in S3, set 'ray_storage: s3://bucket/prefix' (docs/scale.md)")
    return str(Path(text).expanduser().resolve())


def _task_ref_name(task: str) -> str:
    return get_task(task).name


def _abs(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())
