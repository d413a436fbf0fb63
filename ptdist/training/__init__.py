"""Prompt tuning on a DeepSpeed engine, split by role: the run (config, plan, prompt id,
manifest), the engine (DeepSpeed config, precision, the frozen backbone), runs alone or packed
(`packed.train`, `packed.train_packed`), the recipe of trained projectors (fit and its loop),
evaluation and checkpoints."""

from ptdist.lazy import lazy_face

# Lazy (ptdist.lazy): the command line's help reads TrainConfig's defaults without torch.
__all__, __getattr__, __dir__ = lazy_face(__name__, {
    "config": ("TrainConfig",), "packed": ("train",), "run": ("TrainResult",)})
