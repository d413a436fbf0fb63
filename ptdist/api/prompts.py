"""Single prompts: train one, score one, export one as a PEFT adapter. Each runs in this
process (`train` also on every rank under torchrun or the deepspeed launcher)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from ptdist.api.inputs import absolute, open_store, tasks_in
from ptdist.distributed.group import Shard
from ptdist.scoring import (EvalSettings, Scored, check_task_fits, inference_precision, load,
                            predict)
from ptdist.store import Store
from ptdist.store.peft_export import export_peft as write_adapter
from ptdist.tasks import get_task, load_split
from ptdist.training import TrainConfig, TrainResult, train as train_run


def train(config: TrainConfig, store: Store | str | os.PathLike | None = None) -> TrainResult:
    """Prompt-tune ``config.model`` on ``config.task`` and put the best prompt in ``store`` (a
    `Store` or its folder; default $PTDIST_STORE, else ./store).

    Returns the run's `TrainResult`: its ``prompt_id``, ``score`` on ``metric`` (and every
    metric), the step it was best at and its learning curve (``history``). The same run asked
    for again is read from the store (``skipped``); an interrupted run resumes from its last
    checkpoint. Raises `PtdistError` for a bad setting, task, model or data file, before any
    model loads.
    """
    opened = open_store(store)
    [task] = tasks_in([config.task], opened)
    return train_run(replace(config, task=task, data_dir=absolute(config.data_dir)), opened)


def evaluate(model: str, prompt: str, task: str, *, store: Store | str | os.PathLike | None = None,
             settings: EvalSettings = EvalSettings()) -> dict[str, float]:
    """Score ``prompt`` (a store id, a ``.safetensors`` prompt file, or a PEFT adapter folder)
    with ``model`` on the evaluation split of ``task`` (a task name, a YAML path, or the name
    of a task defined in YAML that the store has prompts of).

    Returns ``{metric: score}`` (percentages) for each of the task's metrics. The prompt must
    fit the model (width, and length within its positions); a stored prompt is scored in the
    precision it was trained in unless ``settings.precision`` says otherwise.
    """
    opened = open_store(store, writes=False)
    record = get_task(tasks_in([task], opened)[0])
    tensor = opened.prompts.load(prompt)
    trained = [opened.prompts.manifest(prompt)] if opened.prompts.has(prompt) else []
    rows = load_split(record, "eval", limit=settings.eval_limit,
                      data_dir=settings.data_dir).to_list()  # before the model
    with load(model, TrainConfig.max_length, inference_precision(trained, settings.precision),
              settings.device, settings.ds_config) as backbone:
        backbone.check_prompt(tensor)
        backbone.check_length(tensor.shape[0])
        check_task_fits(record, backbone)
        tensor = tensor.to(next(backbone.parameters()).device)
        return Scored.of(record, rows, predict(
            backbone, lambda b: tensor.expand(b, -1, -1), record, rows, settings.batch_size,
            settings.max_new_tokens, Shard.of_group())).metrics[0]


def export_peft(prompt: str, out_dir: str | os.PathLike, *,
                store: Store | str | os.PathLike | None = None,
                base_model: str | None = None) -> Path:
    """Write the stored prompt ``prompt`` (an id) as a PEFT prompt-tuning adapter folder
    ``out_dir`` (``adapter_config.json`` + ``adapter_model.safetensors``), recording
    ``base_model`` (default: the model it was trained on) as its base.

    Returns the folder; ``peft.PeftModel.from_pretrained(base, folder)`` loads it.
    """
    return write_adapter(open_store(store, writes=False).prompts, prompt, out_dir, base_model)
