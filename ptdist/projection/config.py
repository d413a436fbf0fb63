"""A projector run, as data: which models, which prompts it learns from, how it trains.

The input prompts are named by id (prompt ids are content-addressed, so a scheduler knows them
before they are trained); the projector's own id hashes this whole record, so the same
projector asked for twice is trained once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from ptdist.errors import PtdistError
from ptdist.projection.projector import VARIANTS
from ptdist.tasks import data_fingerprint, get_task
from ptdist.training.config import SCHEDULES, TrainConfig

MODES = ("distance", "task")
# How task tuning reads the classes of its training tasks: each with its own label words, or
# all through the union of their words (the reference implementation's unified verbalizer).
VERBALIZERS = ("task", "unified")


@dataclass(frozen=True)
class ProjectorConfig:
    """A projector from ``source_model``'s prompts to ``target_model``'s
    (`ptdist.train_projector`; docs/projection.md), trained on ``tasks`` by distance
    minimising (to the target's own prompts) or task tuning (through the frozen target model
    on the tasks' data). ``variant``: flat (the reference MLP over the flattened prompt) or
    token; ``hidden`` units; the budget as in `ptdist.TrainConfig`.

    Its id hashes the settings and the prompts it learns from, so the same projector asked for
    twice is trained once.
    """

    source_model: str
    target_model: str
    mode: str  # distance: fit the target's own prompts; task: tune through the target model
    tasks: tuple[str, ...]  # training tasks (the paper: several tasks of one type)
    # Prompt ids of the source model on `tasks`, and (distance mode) of the target's; left
    # empty, `ptdist.train_projector` takes every prompt of the model on `tasks` in the store.
    source_prompts: tuple[str, ...] = ()
    target_prompts: tuple[str, ...] = ()
    variant: str = "flat"
    hidden: int = 768
    seed: int = 0
    steps: int = 1000
    lr: float = 1e-3
    batch_size: int = 32  # prompt pairs (distance) or examples (task) per step
    eval_every: int = 100
    weight_decay: float = 1e-5
    schedule: str = "linear"  # task tuning's learning rate after the warm-up (TrainConfig's)
    warmup_steps: int | None = None  # task tuning's warm-up (None: 10% of steps)
    verbalizer: str = "task"  # task tuning: "task" or "unified" (VERBALIZERS)
    eval_limit: int | None = 1000  # task mode: the target task's evaluation examples
    train_limit: int | None = None
    max_length: int = 128
    patience: int | None = None
    ds_config: str = "zero0"
    data_dir: str | None = field(default=None, compare=False)

    _NOT_HASHED = ("ds_config", "data_dir")
    # Settings added after projector ids existed, at the value every projector had before: left
    # out of the id there, so stored projectors keep their ids.
    _IMPLICIT = {"schedule": "linear", "warmup_steps": None, "verbalizer": "task"}

    def __post_init__(self) -> None:
        for name, known in (("mode", MODES), ("variant", VARIANTS), ("schedule", SCHEDULES),
                            ("verbalizer", VERBALIZERS)):
            if getattr(self, name) not in known:
                raise PtdistError(f"unknown projector {name} '{getattr(self, name)}'; use one "
                                  f"of: {', '.join(known)}")
        if self.source_model == self.target_model:
            raise PtdistError(f"a projector maps between two models; source and target are both "
                              f"'{self.source_model}'")
        if not self.tasks:
            raise PtdistError("a projector needs at least one training task")
        if self.verbalizer == "unified" and self.mode != "task":
            raise PtdistError("a unified verbalizer is how task tuning reads its tasks' "
                              "classes; distance minimising reads none: use mode: task")
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1 or self.hidden < 1:
            raise PtdistError("steps, batch_size, eval_every and hidden must be at least 1")

    def to_dict(self) -> dict:
        return asdict(self)

    def require_prompts(self) -> None:
        """Stop unless the prompts it learns from are named (a stored projector's are)."""
        if not self.source_prompts:
            raise PtdistError(f"no prompt of '{self.source_model}' for {', '.join(self.tasks)}")
        if self.mode == "distance" and not self.target_prompts:
            raise PtdistError(f"distance minimising needs prompts of the target model "
                              f"'{self.target_model}' for {', '.join(self.tasks)}")

    @property
    def projector_id(self) -> str:
        """A hash of the settings and the prompts it learns from; task tuning's also hashes the
        content of the local data files it reads, as a prompt id does."""
        payload = {k: v for k, v in self.to_dict().items() if k not in self._NOT_HASHED
                   and not (k in self._IMPLICIT and v == self._IMPLICIT[k])}
        payload["source_prompts"] = sorted(self.source_prompts)
        payload["target_prompts"] = sorted(self.target_prompts)
        data = data_fingerprint(get_task(self.tasks[0]), ("train", "eval"), self.data_dir) \
            if self.mode == "task" else {}
        if data:
            payload["data"] = data
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def tuning_run(self, prompt_length: int) -> TrainConfig:
        """Task tuning's run through the target model: its budget, batch (per training task)
        and DeepSpeed config."""
        return TrainConfig(model=self.target_model, task=self.tasks[0], seed=self.seed,
                           steps=self.steps, prompt_length=prompt_length, lr=self.lr,
                           schedule=self.schedule, warmup_steps=self.warmup_steps,
                           weight_decay=self.weight_decay, batch_size=self.batch_size,
                           eval_every=self.eval_every, eval_limit=self.eval_limit,
                           train_limit=self.train_limit, max_length=self.max_length,
                           patience=self.patience, ds_config=self.ds_config,
                           data_dir=self.data_dir)


def config_from_dict(data: dict) -> ProjectorConfig:
    """The inverse of `ProjectorConfig.to_dict` (lists back to tuples)."""
    tuples = ("tasks", "source_prompts", "target_prompts")
    return ProjectorConfig(**{k: tuple(v) if k in tuples else v for k, v in data.items()})
