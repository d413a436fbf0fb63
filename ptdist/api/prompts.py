"""Single prompts: train one, score one, export one as a PEFT adapter. Each runs in this
process (`train` also on every rank under torchrun or the deepspeed launcher)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from ptdist.api.inputs import absolute, open_store
from ptdist.store import Store
from ptdist.store.peft_export import export_peft as write_adapter
from ptdist.training import TrainConfig, TrainResult, train as train_run
from ptdist.training.evaluation import EvalSettings, score_prompt


def train(config: TrainConfig, store: Store | str | os.PathLike | None = None) -> TrainResult:
    """Prompt-tune ``config.model`` on ``config.task`` and put the best prompt in ``store`` (a
    `Store` or its folder; default $PTDIST_STORE, else ./store).

    Returns the run's `TrainResult`: its ``prompt_id``, ``score`` on ``metric`` (and every
    metric), the step it was best at and its learning curve (``history``). The same run asked
    for again is read from the store (``skipped``); an interrupted run resumes from its last
    checkpoint. Raises `PtdistError` for a bad setting, task, model or data file, before any
    model loads.
    """
    return train_run(replace(config, data_dir=absolute(config.data_dir)), open_store(store))


def evaluate(model: str, prompt: str, task: str, *, store: Store | str | os.PathLike | None = None,
             settings: EvalSettings = EvalSettings()) -> dict[str, float]:
    """Score ``prompt`` (a store id, a ``.safetensors`` prompt file, or a PEFT adapter folder)
    with ``model`` on the evaluation split of ``task`` (a task name or YAML path).

    Returns ``{metric: score}`` (percentages) for each of the task's metrics. The prompt must
    fit the model (width, and length within its positions); a stored prompt is scored in the
    precision it was trained in unless ``settings.precision`` says otherwise.
    """
    return score_prompt(model, open_store(store, writes=False), prompt, task, settings)


def export_peft(prompt: str, out_dir: str | os.PathLike, *,
                store: Store | str | os.PathLike | None = None,
                base_model: str | None = None) -> Path:
    """Write the stored prompt ``prompt`` (an id) as a PEFT prompt-tuning adapter folder
    ``out_dir`` (``adapter_config.json`` + ``adapter_model.safetensors``), recording
    ``base_model`` (default: the model it was trained on) as its base.

    Returns the folder; ``peft.PeftModel.from_pretrained(base, folder)`` loads it.
    """
    return write_adapter(open_store(store, writes=False).prompts, prompt, out_dir, base_model)
