"""`predict`: what prompts give on a task's rows through a frozen model (class readout or
greedy decoding), the rows shared out over the ranks of a process group."""

from __future__ import annotations

from typing import Callable

import torch

from ptdist.backbones import Backbone
from ptdist.distributed.group import Shard, gather_lists
from ptdist.errors import PtdistError
from ptdist.tasks import TaskRecord

PromptFn = Callable[[int], torch.Tensor]  # batch size -> prompts [B, L, d]


@torch.no_grad()
def predict(backbone: Backbone, prompts: torch.Tensor | PromptFn, task: TaskRecord, rows,
            batch_size: int, max_new_tokens: int, shard: Shard = Shard()) -> list[list]:
    """Predictions (class indices or strings) of each prompt on ``rows``, one list per
    prompt, in one pass over the data; each rank of ``shard`` runs its part of the rows, and
    every rank gets all predictions back.

    ``prompts``: K prompts ``[K, L, d]``, or a prompt function (batch size -> ``[B, L, d]``)
    that is one prompt. K prompts are a batch dimension: every batch of examples is repeated
    K times, each copy behind its own prompt. ``batch_size`` bounds the forward batch
    (examples x prompts); beyond that many prompts the data is passed once per group of
    prompts."""
    if not isinstance(prompts, torch.Tensor):
        return _predict(backbone, prompts, 1, task, rows, batch_size, max_new_tokens, shard)
    preds: list[list] = []
    for group in prompts.split(batch_size):
        per_pass = max(1, batch_size // len(group))
        preds += _predict(backbone, lambda n, g=group: g.repeat_interleave(n, 0), len(group),
                          task, rows, per_pass, max_new_tokens, shard)
    return preds


def _predict(backbone: Backbone, prompts: PromptFn, copies: int, task: TaskRecord, rows,
             batch_size: int, max_new_tokens: int, shard: Shard) -> list[list]:
    """Each batch of examples is tiled ``copies`` times; ``prompts(n)`` gives the
    ``copies * n`` prompts, copy-major. Returns one prediction list per copy."""
    words = task.words_for(backbone.kind)
    indices, real = shard.rows(len(rows))
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
    gathered = [list(zip(indices[:real], mine[:real])) for mine in preds]
    if shard.world > 1:  # a process alone (in a group or not) predicted every row itself
        gathered = [gather_lists(mine) for mine in gathered]
    return [[pred for _, pred in sorted(mine)] for mine in gathered]


def check_task_fits(task: TaskRecord, backbone: Backbone) -> None:
    """Stops, before any forward, on a task ``backbone`` cannot read: a generation task on an
    encoder MLM, or label words that collide in its vocabulary."""
    if task.kind == "generation" and backbone.kind != "seq2seq":
        raise PtdistError(f"task '{task.name}' generates text and needs an encoder-decoder model "
                          f"(T5); '{backbone.name}' is an encoder MLM")
    words = task.words_for(backbone.kind)
    if words is not None:
        backbone.label_token_ids(words)  # fails early on colliding label words
