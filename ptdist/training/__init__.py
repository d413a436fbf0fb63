"""Prompt tuning on a DeepSpeed engine, split by role: the run (config, plan, prompt id,
manifest), the engine (DeepSpeed config, precision, the frozen backbone), the recipe (train, fit
and the loop), packed runs, evaluation and checkpoints."""

from ptdist.training.config import TrainConfig
from ptdist.training.recipe import train
from ptdist.training.run import TrainResult

__all__ = ["TrainConfig", "TrainResult", "train"]
