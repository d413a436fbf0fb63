"""A prompt-tuning run, as data: what to train, for how long, and how."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ptdist.errors import PtdistError

SCHEDULES = ("constant", "linear")
OPTIMIZERS = ("adamw", "adam")


@dataclass(frozen=True)
class TrainConfig:
    """One prompt-tuning run (`ptdist.train`): a soft prompt of ``prompt_length`` tokens
    trained on ``task`` with ``model`` frozen.

    model: a preset (tiny-roberta...), a local model folder, pkg:PACKAGE/path or a hub id.
    task: a registered task name or a task YAML path. init: random | vocab | text:WORDS |
    prompt:ID_OR_PATH. The budget: steps, lr, schedule (constant or linear after
    ``warmup_steps``, default 10 % of steps), optimizer (adamw or adam), batch_size (global),
    eval_every, eval_limit (evaluation examples; None: the whole split), train_limit (a seeded
    subset), max_length (text tokens), patience (evaluations without improvement before
    stopping). Where it runs: ds_config (a ``ds_configs/`` name or JSON path), data_dir (the
    data folder; None: $PTDIST_DATA_DIR, else the task's source), activation_checkpointing.

    The run's prompt id hashes every setting that changes what it computes (not ds_config,
    data_dir or activation_checkpointing), so the same run asked for twice is trained once.
    """

    model: str
    task: str
    seed: int = 0
    steps: int = 1000
    prompt_length: int = 100
    init: str = "random"
    lr: float = 0.01
    # constant: the rate stays at ``lr`` (the paper's); linear: it decays to 0 at the last step.
    # Both warm up linearly over ``warmup_steps`` first.
    schedule: Literal["constant", "linear"] = "linear"
    warmup_steps: int | None = None  # None: 10% of steps
    optimizer: Literal["adamw", "adam"] = "adamw"  # adam: weight decay as an L2 term
    weight_decay: float = 1e-5
    grad_clip: float = 1.0
    batch_size: int = 32  # global: micro batch x processes x accumulation
    eval_every: int = 100
    eval_limit: int | None = 1000  # evaluation examples (None: the whole eval split)
    train_limit: int | None = None
    max_length: int = 128  # text tokens, prompt excluded
    max_new_tokens: int = 64  # generation tasks
    patience: int | None = None  # evaluations without improvement before stopping early
    ds_config: str = "zero0"
    data_dir: str | None = field(default=None, compare=False)
    # Recompute layer activations in the backward (Backbone.checkpoint_activations): less
    # memory, the same result.
    activation_checkpointing: bool = False

    # Fields that do not change what a run computes: excluded from its prompt id, so the same
    # run submitted with another ZeRO stage, data folder or memory trade-off is recognised as
    # already done.
    NOT_HASHED = ("ds_config", "data_dir", "activation_checkpointing")
    # Settings added after prompt ids existed, with the value every run had before: at that
    # value they are left out of the id, so the prompts stored before keep their ids (and a
    # stored config without them reads as having it).
    IMPLICIT = {"schedule": "linear", "optimizer": "adamw"}

    def __post_init__(self) -> None:
        for name in ("steps", "prompt_length", "batch_size", "eval_every", "max_length"):
            if getattr(self, name) < 1:
                raise PtdistError(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("lr", "weight_decay", "grad_clip"):
            if not math.isfinite(getattr(self, name)):
                raise PtdistError(f"{name} must be a finite number (got {getattr(self, name)})")
        if self.lr <= 0:
            raise PtdistError(f"lr must be positive (got {self.lr})")
        if self.patience is not None and self.patience < 1:
            raise PtdistError(f"patience must be at least 1 evaluation (got {self.patience})")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise PtdistError(f"warmup_steps must be 0 or more (got {self.warmup_steps})")
        for name, known in (("schedule", SCHEDULES), ("optimizer", OPTIMIZERS)):
            if getattr(self, name) not in known:
                raise PtdistError(f"unknown {name} {getattr(self, name)!r}; use one of: "
                                  f"{', '.join(known)}")

    @property
    def warmup(self) -> int:
        return self.steps // 10 if self.warmup_steps is None else self.warmup_steps

    def to_dict(self) -> dict:
        return asdict(self)


def hashed_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings of a run (a `TrainConfig.to_dict`, or a stored manifest's config) that
    decide its result and so its prompt id: those in ``NOT_HASHED`` left out, and an
    ``IMPLICIT`` setting left out at its implicit value (or where a stored config lacks it)."""
    implicit = TrainConfig.IMPLICIT
    return {k: v for k, v in settings.items() if k not in TrainConfig.NOT_HASHED
            and not (k in implicit and v == implicit[k])}
