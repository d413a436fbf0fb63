"""Scoring: a frozen model run on prompts, below the stages that train prompts and read them.
Three verbs: `load` a model for inference (whole on a device, or partitioned under ZeRO-3),
`predict` what prompts give on rows, `score` prompts on a task's split (predictions and
metrics); and their settings (`EvalSettings`)."""

from ptdist.lazy import lazy_face

# Lazy (ptdist.lazy): the command line's help reads EvalSettings' defaults without torch.
__all__, __getattr__, __dir__ = lazy_face(__name__, {
    "settings": ("EvalSettings",),
    "loading": ("load", "inference_precision", "inference_device"),
    "prediction": ("predict", "PromptFn", "check_task_fits"),
    "scores": ("score", "Scored", "references")})
