"""Prompt tuning on a DeepSpeed engine: config, recipe, prompt-only checkpoints."""

from ptdist.training.config import TrainConfig
from ptdist.training.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
