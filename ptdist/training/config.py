"""A prompt-tuning run, as data: what to train, for how long, and how."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ptdist.errors import PtdistError

# ds_configs/ sits at the repository root: beside the package in a checkout or editable
# install, and in the working directory of a `ray job submit --working-dir .` job.
DS_CONFIG_DIRS = (Path(__file__).resolve().parents[2] / "ds_configs", Path("ds_configs"))


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

    # Fields that do not change what a run computes: excluded from its content hash, so the same
    # run submitted with another ZeRO stage or data folder is recognised as already done.
    _NOT_HASHED = ("ds_config", "data_dir")

    def __post_init__(self) -> None:
        for name in ("steps", "prompt_length", "batch_size", "eval_every", "max_length"):
            if getattr(self, name) < 1:
                raise PtdistError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.lr <= 0:
            raise PtdistError(f"lr must be positive (got {self.lr})")
        if self.patience is not None and self.patience < 1:
            raise PtdistError(f"patience must be at least 1 evaluation (got {self.patience})")

    @property
    def warmup(self) -> int:
        return self.steps // 10 if self.warmup_steps is None else self.warmup_steps

    def to_dict(self) -> dict:
        return asdict(self)

    def content_hash(self, task_digest: str, init_digest: str, precision: str) -> str:
        """Hash of everything that determines the result: settings, the task record's content
        (not just its name), the init's content, and the numeric precision."""
        payload = {k: v for k, v in self.to_dict().items() if k not in self._NOT_HASHED}
        payload.update(task=task_digest, init=init_digest, precision=precision)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def load_ds_config(name_or_path: str) -> tuple[dict, str]:
    """A DeepSpeed config by short name (``zero2``, ``zero3_bf16`` ...) or JSON path."""
    path = Path(name_or_path)
    if not path.suffix:
        found = [d / f"{name_or_path}.json" for d in DS_CONFIG_DIRS]
        path = next((p for p in found if p.exists()), found[0])
    try:
        return json.loads(path.read_text()), str(path)
    except FileNotFoundError:
        names = sorted({p.stem for d in DS_CONFIG_DIRS for p in d.glob("*.json")})
        raise PtdistError(f"DeepSpeed config '{name_or_path}' not found; give a JSON file path "
                          f"or one of: {', '.join(names)}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise PtdistError(f"cannot read DeepSpeed config {path}: {exc}. It must be a JSON "
                          "object; see ds_configs/README.md for examples.") from None
