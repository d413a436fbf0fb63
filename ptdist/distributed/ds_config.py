"""A DeepSpeed config as ptdist reads it: by name (``ds_configs/``) or path, its precision,
ZeRO and accumulation settings checked; the precision and ZeRO stage it runs; the config of an
engine that holds only a frozen model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, PositiveInt

from ptdist.errors import PtdistError
from ptdist.files import not_a_file, read_text
from ptdist.shipped import listing, shipped_file
from ptdist.validation import json_kind, located, validate


class _Section(BaseModel):
    """A part of a DeepSpeed config that ptdist reads: its keys are checked, the others are
    DeepSpeed's to check."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class _Switch(_Section):
    enabled: bool = False


class _Zero(_Section):
    stage: Literal[0, 1, 2, 3] = 0


class _DeepSpeedConfig(_Section):
    fp16: _Switch | None = None
    bf16: _Switch | None = None
    zero_optimization: _Zero | None = None
    gradient_accumulation_steps: PositiveInt = 1


def load_ds_config(name_or_path: str) -> tuple[dict, str]:
    """A DeepSpeed config by short name (``zero2``, ``zero3_bf16`` ...) or JSON path: a JSON
    object whose precision, ZeRO and accumulation settings have the types DeepSpeed wants."""
    path = Path(name_or_path)
    if not path.suffix:  # a name: ds_configs/<name>.json, shipped with ptdist
        path = shipped_file("ds_configs", name_or_path, ".json", "DeepSpeed config",
                            "a JSON file path")
    if not_a_file(path) == "missing":
        raise PtdistError(f"DeepSpeed config '{name_or_path}' not found; give a JSON file path "
                          f"or one of: {listing('ds_configs', '.json')}")
    text = read_text(path, "DeepSpeed config")  # a FIFO or a folder is refused by its type
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise PtdistError(f"cannot read DeepSpeed config {path}: {exc}. It must be a JSON "
                          "object; see ds_configs/README.md for examples.") from None
    if not isinstance(raw, dict):
        raise PtdistError(f"DeepSpeed config {path} is {json_kind(raw)}, not a JSON object; "
                          "see ds_configs/README.md for examples")
    with located(f"DeepSpeed config {path}", "ds_configs/README.md"):
        validate(_DeepSpeedConfig, raw)
    return raw, str(path)


def precision_of(ds: dict) -> str:
    """``bf16`` or ``fp32``, as a DeepSpeed config asks; fp16 is refused."""
    if ds.get("fp16", {}).get("enabled"):
        raise PtdistError("fp16 is not supported: T5 overflows in fp16, and ptdist keeps one "
                          "precision policy for all backbones; use a bf16 config "
                          "(e.g. --ds-config zero2_bf16) or fp32")
    return "bf16" if ds.get("bf16", {}).get("enabled") else "fp32"


def zero_stage(ds_config: dict) -> int:
    return ds_config.get("zero_optimization", {}).get("stage", 0)


def frozen_engine_config(ds_config: dict) -> dict:
    """The DeepSpeed config of an engine that holds only a frozen backbone (a packed job's).
    ZeRO-1/2 partition optimizer state and gradients, and a frozen model has neither (DeepSpeed
    also refuses those stages without an optimizer): they run as stage 0. ZeRO-3 partitions
    the parameters themselves and is kept."""
    if zero_stage(ds_config) == 3:
        return ds_config
    return dict(ds_config, zero_optimization={"stage": 0})


