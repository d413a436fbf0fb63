"""The store's records of what it holds: typed manifests with a schema version.

A manifest is JSON on disk and a frozen dataclass in memory; only the store reads and writes
them (`PromptStore`, `ProjectorStore`). Each carries ``schema_version``:

- version 2 (this one) is written by this ptdist;
- version 1 (no ``schema_version`` key) was written before the store owned its records; it is
  read and upgraded in memory (its redundant ``config_hash``, ``prompt_length`` and ``width``
  are dropped: they are the id and the shape);
- a higher version was written by a newer ptdist and is refused with a clear error.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, ClassVar

from ptdist.errors import PtdistError

SCHEMA_VERSION = 2


def _upgrade(kind: str, data: dict[str, Any], dropped: tuple[str, ...]) -> dict[str, Any]:
    """``data`` as the current schema has it, or a clear error for a newer one."""
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise PtdistError(f"{kind} manifest {data.get('id', '?')} has schema version {version!r}, "
                          f"newer than this ptdist reads ({SCHEMA_VERSION}); upgrade ptdist "
                          "(pip install -U ptdist) to read this store")
    if version == 1:
        data = {k: v for k, v in data.items() if k not in dropped}
    return dict(data, schema_version=SCHEMA_VERSION)


def _build(cls, kind: str, data: dict[str, Any]):
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    missing = sorted(f.name for f in fields(cls) if f.name not in data
                     and f.default is MISSING and f.default_factory is MISSING)
    if unknown or missing:
        raise PtdistError(f"{kind} manifest {data.get('id', '?')} does not match schema "
                          f"version {SCHEMA_VERSION}: "
                          + "; ".join(p for p in (f"unknown keys {unknown}" if unknown else "",
                                                  f"missing keys {missing}" if missing else "")
                                      if p))
    return cls(**data)


@dataclass(frozen=True)
class PromptManifest:
    """A trained prompt: what it is (model, task, seed, init, config), how it scored, and how
    it was trained."""

    id: str
    model: str
    task: str  # the task's name
    task_type: str
    seed: int
    init: str
    metric: str  # the primary metric; `score` is its best value
    score: float
    metrics: dict[str, float]  # every metric at the best evaluation
    steps: int  # steps run (fewer than configured after an early stop)
    best_step: int
    shape: list[int]  # [L, d]
    backbone_kind: str  # mlm | seq2seq
    precision: str  # bf16 | fp32
    config: dict[str, Any]  # the TrainConfig it was trained with, as a dict
    history: list[dict[str, Any]]  # every evaluation: step, loss, time_s, metrics
    world_size: int
    zero_stage: int
    resumed_from: int | None
    wall_time_s: float
    created: float
    ptdist_version: str
    backbone_fingerprint: str | None = None
    packed_with: list[str] | None = None  # the prompt ids of its pack, if it trained in one
    schema_version: int = SCHEMA_VERSION

    _DROPPED_V1: ClassVar[tuple[str, ...]] = ("config_hash", "prompt_length", "width")

    @property
    def task_ref(self) -> str:
        """The task as the run named it: a registered name or a task YAML path."""
        return self.config["task"]

    @property
    def prompt_length(self) -> int:
        return self.shape[0]

    @property
    def max_length(self) -> int:
        return self.config["max_length"]

    @property
    def data_dir(self) -> str | None:
        return self.config.get("data_dir")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PromptManifest":
        return _build(cls, "prompt", _upgrade("prompt", data, cls._DROPPED_V1))


@dataclass(frozen=True)
class ProjectorManifest:
    """A trained projector: its config, shape and training facts. Distance minimising fills
    ``pairs`` and the distances; task tuning the score fields."""

    id: str
    config: dict[str, Any]  # the ProjectorConfig, as a dict
    source_model: str
    target_model: str
    mode: str  # distance | task
    tasks: list[str]
    shape: dict[str, Any]  # the ProjectorShape, as a dict
    prompts: list[str]  # ids of the prompts it learned from
    history: list[dict[str, Any]]
    wall_time_s: float
    created: float
    ptdist_version: str
    pairs: int | None = None
    initial_distance: float | None = None
    distance: float | None = None
    source_prompt: str | None = None
    metric: str | None = None
    score: float | None = None
    best_step: int | None = None
    steps: int | None = None
    resumed_from: int | None = None
    world_size: int | None = None
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ProjectorManifest":
        return _build(cls, "projector", _upgrade("projector", data, ()))

