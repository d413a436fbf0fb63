"""A prompt-tuning run, as data: what to train, for how long, and how."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ptdist.errors import PtdistError


@dataclass(frozen=True)
class TrainConfig:
    model: str
    task: str
    seed: int = 0
    steps: int = 1000
    prompt_length: int = 100
    init: str = "random"
    lr: float = 0.01
    warmup_steps: int | None = None  # None: 10% of steps
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

    @property
    def warmup(self) -> int:
        return self.steps // 10 if self.warmup_steps is None else self.warmup_steps

    def to_dict(self) -> dict:
        return asdict(self)
