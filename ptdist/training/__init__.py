"""Prompt tuning on a DeepSpeed engine, split by role: the run (config, plan, prompt id,
manifest), the engine (DeepSpeed config, precision, the frozen backbone), runs alone or packed
(`packed.train`, `packed.train_packed`), the recipe of trained projectors (fit and its loop),
evaluation and checkpoints."""

from ptdist.training.config import TrainConfig
from ptdist.training.packed import train
from ptdist.training.run import TrainResult

__all__ = ["TrainConfig", "TrainResult", "train"]
