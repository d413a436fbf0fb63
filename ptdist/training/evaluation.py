"""Score a prompt on a task's evaluation rows: class readout or greedy decoding + metric."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch

from ptdist.backbones import Backbone, dtype_of, load_backbone
from ptdist.errors import PtdistError
from ptdist.store import Store
from ptdist.store.manifests import PromptManifest
from ptdist.tasks import TaskRecord, compute_metrics, get_task, load_split
from ptdist.training.data import eval_shard
from ptdist.training.distributed import gather_lists, group_ranks, init_distributed
from ptdist.training.engine import frozen_model, inference_config, load_ds_config
from ptdist.training.op_builds import watched_builds

PromptFn = Callable[[int], torch.Tensor]  # batch size -> prompts [B, L, d]


@torch.no_grad()
def predict(backbone: Backbone, prompts: PromptFn, task: TaskRecord, rows, batch_size: int,
            max_new_tokens: int, rank: int = 0, world: int = 1) -> list:
    """Predictions for ``rows`` (class indices or strings), computed across ranks."""
    return _predict(backbone, prompts, 1, task, rows, batch_size, max_new_tokens, rank, world)[0]


@torch.no_grad()
def predict_each(backbone: Backbone, prompts: torch.Tensor, task: TaskRecord, rows,
                 batch_size: int, max_new_tokens: int, rank: int = 0,
                 world: int = 1) -> list[list]:
    """Predictions of each of K prompts ``[K, L, d]`` on ``rows``, in one pass over the data:
    every batch of examples is repeated K times, each copy behind its own prompt, so the
    prompts are a batch dimension. ``batch_size`` bounds the forward batch (examples x
    prompts); beyond that many prompts the data is passed once per group of prompts."""
    preds: list[list] = []
    for group in prompts.split(batch_size):
        per_pass = max(1, batch_size // len(group))
        preds += _predict(backbone, lambda n, g=group: g.repeat_interleave(n, 0), len(group),
                          task, rows, per_pass, max_new_tokens, rank, world)
    return preds


def _predict(backbone: Backbone, prompts: PromptFn, copies: int, task: TaskRecord, rows,
             batch_size: int, max_new_tokens: int, rank: int, world: int) -> list[list]:
    """Each batch of examples is tiled ``copies`` times; ``prompts(n)`` gives the
    ``copies * n`` prompts, copy-major. Returns one prediction list per copy."""
    words = task.words_for(backbone.kind)
    indices, real = eval_shard(len(rows), rank, world)
    # Rows of similar length share a batch, so little of each forward is padding. The padded
    # tail that keeps ranks in step stays last; predictions go back to their rows' order below.
    indices = sorted(indices[:real], key=lambda i: len(rows[i]["text"])) + indices[real:]
    device = next(backbone.parameters()).device
    preds: list[list] = [[] for _ in range(copies)]
    for start in range(0, len(indices), batch_size):
        chunk = [rows[i] for i in indices[start:start + batch_size]]
        batch = {k: v.to(device).repeat(copies, *([1] * (v.dim() - 1)))
                 for k, v in backbone.collate(chunk, words).items()}
        p = prompts(len(chunk))
        if words is not None:
            out = backbone.class_logits(p, batch).argmax(-1).tolist()
        else:
            out = backbone.generate(p, batch, max_new_tokens)
        for copy in range(copies):
            preds[copy].extend(out[copy * len(chunk):(copy + 1) * len(chunk)])
    return [[pred for _, pred in sorted(gather_lists(list(zip(indices[:real], mine[:real]))))]
            for mine in preds]


def references(task: TaskRecord, rows) -> list:
    return [r["label"] for r in rows] if task.kind == "classification" else \
        [r["references"] for r in rows]


def evaluate(backbone: Backbone, prompts: PromptFn, task: TaskRecord, rows, batch_size: int,
             max_new_tokens: int, rank: int = 0, world: int = 1) -> dict[str, float]:
    preds = predict(backbone, prompts, task, rows, batch_size, max_new_tokens, rank, world)
    return compute_metrics(task, preds, references(task, rows))


def check_task_fits(task: TaskRecord, backbone: Backbone) -> None:
    if task.kind == "generation" and backbone.kind != "seq2seq":
        raise PtdistError(f"task '{task.name}' generates text and needs an encoder-decoder model "
                          f"(T5); '{backbone.name}' is an encoder MLM")
    words = task.words_for(backbone.kind)
    if words is not None:
        backbone.label_token_ids(words)  # fails early on colliding label words


def inference_precision(prompts: Sequence[PromptManifest], given: str | None) -> str:
    """The precision a stage runs a frozen model in to score or read ``prompts``: ``given``
    (a stage setting), else the one they were trained in (their manifests): a prompt trained
    in bf16 is scored in bf16. Prompts trained in different precisions are read in fp32."""
    if given is not None:
        dtype_of(given)  # names a known precision, or stops
        return given
    trained = {m.precision for m in prompts}
    return trained.pop() if len(trained) == 1 else "fp32"


def inference_device(device: str | None) -> torch.device:
    """``device``, else the GPU this process holds (Ray gives a job the GPUs it reserved),
    else the CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def eval_backbone(model: str, max_length: int = 128, precision: str = "fp32",
                  device: str | None = None) -> Backbone:
    """``model`` loaded for inference in ``precision``, on ``device`` (`inference_device`)."""
    backbone = load_backbone(model, max_length=max_length, dtype=dtype_of(precision))
    return backbone.to(inference_device(device))


@contextmanager
def inference_backbone(model: str, max_length: int = 128, precision: str = "fp32",
                       device: str | None = None,
                       ds_config: str | None = None) -> Iterator[Backbone]:
    """``model`` for inference in ``precision``, for the length of the block: whole on one
    device (`eval_backbone`), or, given a DeepSpeed config (a ``ds_configs/`` name or path),
    partitioned over the process group this process is in (ZeRO-3: each rank holds 1/world of
    the weights, and every layer is gathered while it runs; on the rank's GPU, else the CPU).
    Partitioned, it is a collective: every rank of the group enters the block and runs the
    same forwards (`score_prompts` gives each rank a padded slice of the rows)."""
    if ds_config is None:
        yield eval_backbone(model, max_length, precision, device)
        return
    import deepspeed

    _, world = init_distributed()
    ds = inference_config(load_ds_config(ds_config)[0], precision, world)
    with frozen_model(model, max_length, ds) as backbone:
        with watched_builds():
            engine, *_ = deepspeed.initialize(model=backbone, config=ds)
        yield engine.module


@dataclass(frozen=True)
class EvalSettings:
    """How prompts are scored on a task's evaluation split (`ptdist.evaluate`,
    `ptdist.evaluate_projector`).

    eval_limit: evaluation examples per task (a seeded subset; None: the whole split).
    batch_size: examples per forward pass. max_new_tokens: the longest answer a generation
    task decodes. data_dir: the data folder (`<data_dir>/<task>/eval.jsonl`...; None:
    $PTDIST_DATA_DIR, else the task's own source). precision: bf16 or fp32 (None: the one the
    prompts were trained in). device: e.g. "cuda:1" (None: the GPU this process holds, else
    the CPU). ds_config: a DeepSpeed config (a ``ds_configs/`` name or JSON path) to partition
    the model over the process group this runs in (None: the whole model in this process).
    """

    eval_limit: int | None = 1000
    batch_size: int = 64
    max_new_tokens: int = 64
    data_dir: str | None = None
    precision: str | None = None
    device: str | None = None
    # How it runs, not what it computes: not in repr, which a study's stamp key reads.
    ds_config: str | None = field(default=None, repr=False)


@dataclass
class Scored:
    """K prompts on a task's evaluation rows: each prompt's predictions and metrics."""

    task: TaskRecord
    references: list  # class indices, or lists of reference strings
    predictions: list[list]  # one list per prompt, row by row
    metrics: list[dict[str, float]]  # one per prompt


def score_prompts(backbone: Backbone, task_ref: str, prompts: torch.Tensor, *,
                  data_dir: str | None, limit: int | None, batch_size: int,
                  max_new_tokens: int) -> Scored:
    """Predictions and metrics of each prompt ``[K, L, d]`` on the task's evaluation rows
    (read once for all of them, `predict_each`)."""
    task = get_task(task_ref)
    backbone.check_prompt(prompts[0])
    check_task_fits(task, backbone)
    rows = load_split(task, "eval", limit=limit, data_dir=data_dir).to_list()
    device = next(backbone.parameters()).device
    # Under a group every rank scores its slice of the rows and gets all predictions back.
    preds = predict_each(backbone, prompts.to(device), task, rows, batch_size, max_new_tokens,
                         *group_ranks())
    refs = references(task, rows)
    return Scored(task, refs, preds, [compute_metrics(task, p, refs) for p in preds])


def score_prompt(model: str, store: Store, prompt_ref: str, task_ref: str,
                 settings: EvalSettings = EvalSettings()) -> dict[str, float]:
    """Evaluate one prompt (store id or file) on a task's evaluation split, in this process:
    in ``settings.precision`` (default: the one a stored prompt was trained in; fp32 for a
    file)."""
    task = get_task(task_ref)
    prompt = store.prompts.load(prompt_ref)
    trained = [store.prompts.manifest(prompt_ref)] if store.prompts.has(prompt_ref) else []
    rows = load_split(task, "eval", limit=settings.eval_limit,
                      data_dir=settings.data_dir).to_list()  # before the model
    with inference_backbone(model, precision=inference_precision(trained, settings.precision),
                            device=settings.device, ds_config=settings.ds_config) as backbone:
        backbone.check_prompt(prompt)
        backbone.check_length(prompt.shape[0])
        check_task_fits(task, backbone)
        prompt = prompt.to(next(backbone.parameters()).device)
        return evaluate(backbone, lambda b: prompt.expand(b, -1, -1), task, rows,
                        settings.batch_size, settings.max_new_tokens)
