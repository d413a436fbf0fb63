"""The store's records of what it holds: typed manifests with a schema version.

A manifest is strict JSON on disk and a frozen dataclass in memory; only the store reads and
writes them (`PromptStore`, `ProjectorStore`). Reading one checks it whole (`read_manifest`):
valid JSON without NaN or infinity, a mapping, known keys, every required key, and each value of
its declared type; the first problem is one `PtdistError`. Each carries ``schema_version``:

- version 4 (this one) is written by this ptdist: a prompt's manifest adds ``init_rule``, how
  its init's random draws were seeded (`ptdist.backbones.prompt.INIT_RULE`);
- version 3 adds ``file_sha256``, the checksum of the record's tensor file, which the store
  verifies when it reads the file; it is read as it is, a prompt's ``init_rule`` "seed" (the
  rule of every prompt stored before version 4);
- version 2 is read as version 3, with no checksum to verify (``file_sha256`` None);
- version 1 (no ``schema_version`` key) was written before the store owned its records; it is
  read and upgraded in memory (its redundant ``config_hash``, ``prompt_length`` and ``width``
  are dropped: they are the id and the shape);
- a higher version was written by a newer ptdist and is refused with a clear error.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, ClassVar, TypeVar

from ptdist.errors import PtdistError
from ptdist.validation import dataclass_shape, json_kind, validate

SCHEMA_VERSION = 4
M = TypeVar("M")


class NewerSchema(PtdistError):
    """A manifest written by a newer ptdist: sound, but not readable by this one."""


def _upgrade(kind: str, data: dict[str, Any], dropped: tuple[str, ...]) -> dict[str, Any]:
    """``data`` as the current schema has it, or a clear error for a newer one."""
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise NewerSchema(f"{kind} manifest {data.get('id', '?')} has schema version {version!r}, "
                          f"newer than this ptdist reads ({SCHEMA_VERSION}); upgrade ptdist "
                          "(pip install -U ptdist) to read this store")
    if version == 1:
        data = {k: v for k, v in data.items() if k not in dropped}
    return dict(data, schema_version=SCHEMA_VERSION)


def _not_strict(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value")


@lru_cache(maxsize=None)
def _shape(cls: type):
    return dataclass_shape(cls, exclude=())


def strict_json(text: str) -> Any:
    """``text`` parsed as strict JSON (no NaN or infinity); the first problem is one
    PtdistError."""
    try:
        return json.loads(text, parse_constant=_not_strict)
    except ValueError as exc:  # JSONDecodeError is a ValueError too
        raise PtdistError(f"not valid JSON ({exc})") from None
    except RecursionError:
        raise PtdistError("not valid JSON as ptdist reads it: its values nest deeper than "
                          "Python's JSON reader goes") from None


def read_manifest(cls: type[M], kind: str, text: str) -> M:
    """The manifest of type ``cls`` (a ``kind``: "prompt", "projector") in JSON ``text``,
    checked whole; the first problem raises one PtdistError naming it."""
    data = strict_json(text)
    if not isinstance(data, dict):
        raise PtdistError(f"a manifest is a JSON object, not {json_kind(data)}")
    data = _upgrade(kind, data, getattr(cls, "_DROPPED_V1", ()))
    validate(_shape(cls), data)
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
    file_sha256: str | None = None  # of prompt.safetensors; None in a version-2 manifest
    # How the init's random draws were seeded: "seed+task" since version 4; "seed" before.
    init_rule: str = "seed"
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
    file_sha256: str | None = None  # of projector.safetensors; None in a version-2 manifest
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

