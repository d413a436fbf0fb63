"""A prompt-tuning run as the store knows it: its plan and prompt id (known before any model
loads), its data, and, once it has finished, its result and manifest."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache

import torch

from ptdist import __version__
from ptdist.backbones import (Backbone, PromptInit, fitted_head_key, initial_prompt, model_config,
                              model_kind)
from ptdist.backbones.prompt import INIT_RULE, PROMPT_PARAM, init_generator
from ptdist.backbones.prompt_init import InitMode
from ptdist.distributed.ds_config import load_ds_config, precision_of, zero_stage
from ptdist.distributed.group import Shard
from ptdist.errors import PtdistError
from ptdist.scoring import check_task_fits
from ptdist.store import Store
from ptdist.store.manifests import PromptManifest
from ptdist.tasks import TaskRecord, data_fingerprint, get_task, load_split
from ptdist.training.checkpoint import TrainState
from ptdist.training.config import TrainConfig, hashed_settings
from ptdist.training.memory import model_memory


@dataclass
class TrainResult:
    """What a prompt-tuning run left in the store: the prompt's id, its best ``score`` on the
    task's primary ``metric`` (and all ``metrics``), the step it was best at, the steps this
    call ran (``skipped``: the prompt was stored already; ``resumed_from``: the checkpoint it
    continued from), and its learning curve (``history``: one evaluation per row)."""

    prompt_id: str
    task: str
    model: str
    metric: str
    score: float
    metrics: dict[str, float]
    best_step: int
    steps_run: int
    resumed_from: int | None
    skipped: bool
    wall_time_s: float
    store: str
    examples: int  # training examples this call processed (0 when it found the prompt stored)
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RunPlan:
    """What a run is, before any model is loaded: enough to know its id (and so whether the
    store already holds its prompt)."""

    task: TaskRecord
    init: PromptInit
    artifact: torch.Tensor | None  # the source prompt of a prompt:... init
    ds_config: dict  # as read, before batch sizes are filled in
    precision: str
    prompt_id: str


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _record_content(task: TaskRecord) -> dict:
    """The task record as the id hashes it. A record without standard data files or a
    held-out split hashes as records did before ``source.local`` and ``source.holdout``
    existed, so the prompts stored then keep their ids."""
    content = asdict(task)
    for key in ("local", "holdout"):
        if getattr(task.source, key) is None:
            del content["source"][key]
    return content


def prompt_id_of(config: TrainConfig, task: TaskRecord, init_digest: str, precision: str,
                 data: dict[str, str], head: str | None = None,
                 init_rule: str | None = None) -> str:
    """The run's content-addressed id: a hash of everything that determines its result (the
    settings, the task record's content rather than its name, the init's content, the
    precision, and the content of the local data files it reads: `data_fingerprint`), so the
    same run asked for twice is trained once, and a run on other rows is another run wherever
    its files lie. A run on hub data only hashes as it did before data was hashed: the task
    record names its dataset and revision. A checkpoint without its MLM head adds the recipe of
    the head it is given (``head``): a prompt tuned on another head is another prompt. An init
    drawn at random adds the rule that seeds its draws (``init_rule``, `INIT_RULE`): a run
    stored under the earlier rule (the seed alone) keeps its id and is another run."""
    payload = hashed_settings(config.to_dict())
    payload.update(task=_digest(_record_content(task)), init=init_digest, precision=precision)
    if init_rule:
        payload["init_rule"] = init_rule
    if data:
        payload["data"] = data
    if head:
        payload["mlm_head"] = head
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def plan_run(config: TrainConfig, store: Store) -> RunPlan:
    task = get_task(config.task)
    init = config.init
    artifact = store.prompts.load(init.prompt) if init.mode is InitMode.PROMPT else None
    init_digest = hashlib.sha256(artifact.numpy().tobytes()).hexdigest() if artifact is not None \
        else str(init)
    ds_config, _ = load_ds_config(config.ds_config)
    precision = precision_of(ds_config)
    check_positions(config, precision)
    data = data_fingerprint(task, ("train", "eval"), config.data_dir)
    return RunPlan(task, init, artifact, ds_config, precision,
                   prompt_id_of(config, task, init_digest, precision, data,
                                fitted_head_key(config.model),
                                INIT_RULE if init.draws else None))


def check_positions(config: TrainConfig, precision: str) -> None:
    """The loaded model's prompt-length check (`Backbone.check_length`), run on the model built
    from its config on the meta device: `ptdist train` and a sweep's dry run refuse a prompt
    too long for the model alike, before any weights load. A model whose config is not at hand
    here (a hub model without hub access) is checked when it loads."""
    backbone = _planned_mlm(config.model, precision)
    if backbone is not None:
        backbone.check_length(config.prompt_length, config.max_length)


@lru_cache(maxsize=64)
def _planned_mlm(model: str, precision: str) -> Backbone | None:
    """``model`` on the meta device if it is an encoder MLM (an encoder-decoder has relative
    positions: no limit to check); None also when its config cannot be read here, looked up
    once per process (a sweep plans every run)."""
    try:
        if model_kind(model_config(model)) != "mlm":
            return None
        return model_memory(model, precision).backbone
    except (PtdistError, ValueError):  # no config here, or no model ptdist tunes: the load says
        return None


@dataclass
class RunData:
    train: list[dict]
    eval: list[dict]
    words: list[str] | None  # label words for this backbone; None for generation tasks


def read_run_data(config: TrainConfig, task: TaskRecord) -> RunData:
    """A run's training and evaluation rows, read before its model loads, so a bad data file
    stops the run before that work; the label words come with the backbone (`suited`)."""
    # Subsets are drawn with a fixed seed: runs of every seed, and `ptdist eval`, see the same
    # rows, so their scores compare; the run's seed only sets the init and the data order.
    return RunData(
        train=load_split(task, "train", limit=config.train_limit,
                         data_dir=config.data_dir).to_list(),
        eval=load_split(task, "eval", limit=config.eval_limit,
                        data_dir=config.data_dir).to_list(),
        words=None)


def suited(data: RunData, config: TrainConfig, task: TaskRecord, backbone: Backbone) -> RunData:
    """``data`` with ``backbone``'s label words, after checking the task and the prompt length
    suit the backbone."""
    check_task_fits(task, backbone)
    backbone.check_length(config.prompt_length)
    return replace(data, words=task.words_for(backbone.kind))


def unified_verbalizer(data: list[RunData]) -> list[RunData]:
    """The training rows of several tasks read through one verbalizer, as the reference
    implementation trains its cross-model projectors: the union of the tasks' label words (in
    order of first appearance; a word two tasks share is one class), each row labelled with its
    word's place there, so every task's loss is a softmax over all the words. Evaluation rows
    are left as they are: each task is scored with its own words."""
    words = list(dict.fromkeys(w for d in data for w in d.words or ()))
    index = {w: i for i, w in enumerate(words)}
    return [RunData([dict(r, label=index[d.words[r["label"]]]) for r in d.train], d.eval, words)
            if d.words is not None else d for d in data]


def fresh_prompt(config: TrainConfig, plan: RunPlan, backbone: Backbone) -> torch.Tensor:
    """The run's initial prompt, from its init (drawn from its seed and task)."""
    import deepspeed

    if plan.artifact is not None:
        backbone.check_prompt(plan.artifact)
    generator = init_generator(config.seed, plan.task.name)
    # Under ZeRO-3 the embedding matrix is partitioned; vocab/text init read its rows.
    with deepspeed.zero.GatheredParameters([backbone.word_embeddings.weight]):
        return initial_prompt(plan.init, backbone.word_embeddings, config.prompt_length,
                              backbone.special_ids(), backbone.tokenizer, generator,
                              plan.artifact)


@dataclass
class Fitted:
    """What a finished run leaves: its trained parameters at its best evaluation, and the facts
    of the run its caller records."""

    best: dict[str, torch.Tensor]
    state: TrainState
    backbone: Backbone
    shard: Shard  # this process's place in the group that trained it
    ds_config: dict
    fingerprint: str
    resumed_from: int | None


def store_finished(config: TrainConfig, plan: RunPlan, fitted: Fitted, store: Store,
                   t0: float, packed_with: list[str] | None = None,
                   text_cut: int | None = None) -> TrainResult:
    """The result of a prompt-tuning run that has finished (its steps done, or stopped early);
    rank 0 puts its best prompt and manifest in the store. ``text_cut``: the run's own cut of
    its training texts (`lengths.text_cut`), if it had one."""
    state = fitted.state
    best = next(h for h in state.history if h["step"] == state.best_step)
    metrics = {k: v for k, v in best.items() if k not in ("step", "loss", "time_s")}
    trained = (state.step - (fitted.resumed_from or 0)) * config.batch_size
    result = TrainResult(plan.prompt_id, plan.task.name, config.model, plan.task.primary_metric,
                         state.best_score, metrics, state.best_step, state.step,
                         fitted.resumed_from, False, time.time() - t0, str(store.root),
                         trained, state.history)
    if fitted.shard.leads:
        prompt = fitted.best[PROMPT_PARAM]
        store.prompts.put(prompt, PromptManifest(
            id=plan.prompt_id, model=config.model, task=plan.task.name,
            task_type=plan.task.type, seed=config.seed, init=str(config.init),
            metric=result.metric, score=result.score, metrics=result.metrics,
            steps=result.steps_run, best_step=result.best_step, shape=list(prompt.shape),
            backbone_kind=fitted.backbone.kind, precision=plan.precision,
            config=config.to_dict(), history=result.history, world_size=fitted.shard.world,
            zero_stage=zero_stage(fitted.ds_config), resumed_from=result.resumed_from,
            wall_time_s=result.wall_time_s, created=time.time(), ptdist_version=__version__,
            backbone_fingerprint=fitted.fingerprint, packed_with=packed_with,
            init_rule=INIT_RULE, text_cut=text_cut))
    return result


def stored_result(store: Store, prompt_id: str, skipped: bool,
                  t0: float | None = None) -> TrainResult:
    """The result of a run whose prompt is in the store. ``skipped``: this call did not train
    it (its wall time is then that of the lookup since ``t0``, not of the training)."""
    m = store.prompts.manifest(prompt_id)
    wall = time.time() - t0 if skipped and t0 is not None else m.wall_time_s
    examples = 0 if skipped else (m.steps - (m.resumed_from or 0)) * m.config["batch_size"]
    return TrainResult(prompt_id, m.task, m.model, m.metric, m.score, m.metrics, m.best_step,
                       m.steps, None if skipped else m.resumed_from, skipped, wall,
                       str(store.root), examples, m.history)
