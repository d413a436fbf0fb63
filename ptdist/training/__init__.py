"""Prompt tuning on a DeepSpeed engine, split by role: the run (config, plan, prompt id,
manifest), the engine (DeepSpeed config, the frozen backbone, optimizer and schedule), runs
alone or packed (`packed.train`, `packed.train_packed`), the recipe of trained projectors (fit
and its loop), checkpoints. A run scores its prompt through `ptdist.scoring`."""

from ptdist.lazy import lazy_face

# Lazy (ptdist.lazy): the command line's help reads TrainConfig's defaults without torch.
__all__, __getattr__, __dir__ = lazy_face(__name__, {
    "config": ("TrainConfig",), "packed": ("train",), "run": ("TrainResult",)})
