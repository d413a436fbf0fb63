"""Score a prompt on a task's evaluation rows: class readout or greedy decoding + metric."""

from __future__ import annotations

from typing import Callable

import torch

from ptdist.backbones import Backbone, load_backbone
from ptdist.errors import PtdistError
from ptdist.store.prompts import PromptStore
from ptdist.tasks import TaskRecord, compute_metrics, get_task, load_split
from ptdist.training.data import eval_shard
from ptdist.training.distributed import gather_lists

PromptFn = Callable[[int], torch.Tensor]  # batch size -> prompts [B, L, d]


def label_words(task: TaskRecord, backbone: Backbone) -> list[str] | None:
    if task.kind != "classification":
        return None
    return list(task.label_words["mlm" if backbone.kind == "mlm" else "t5"])


@torch.no_grad()
def predict(backbone: Backbone, prompts: PromptFn, task: TaskRecord, rows, batch_size: int,
            max_new_tokens: int, rank: int = 0, world: int = 1) -> list:
    """Predictions for ``rows`` (class indices or strings), computed across ranks."""
    words = label_words(task, backbone)
    indices, real = eval_shard(len(rows), rank, world)
    device = next(backbone.parameters()).device
    preds: list = []
    for start in range(0, len(indices), batch_size):
        chunk = [rows[i] for i in indices[start:start + batch_size]]
        batch = {k: v.to(device) for k, v in backbone.collate(chunk, words).items()}
        p = prompts(len(chunk))
        if words is not None:
            preds.extend(backbone.class_logits(p, batch).argmax(-1).tolist())
        else:
            preds.extend(backbone.generate(p, batch, max_new_tokens))
    mine = list(zip(indices[:real], preds[:real]))
    return [pred for _, pred in sorted(gather_lists(mine))]


def evaluate(backbone: Backbone, prompts: PromptFn, task: TaskRecord, rows, batch_size: int,
             max_new_tokens: int, rank: int = 0, world: int = 1) -> dict[str, float]:
    preds = predict(backbone, prompts, task, rows, batch_size, max_new_tokens, rank, world)
    refs = [r["label"] for r in rows] if task.kind == "classification" else \
        [r["references"] for r in rows]
    return compute_metrics(task, preds, refs)


def check_task_fits(task: TaskRecord, backbone: Backbone) -> None:
    if task.kind == "generation" and backbone.kind != "seq2seq":
        raise PtdistError(f"task '{task.name}' generates text and needs an encoder-decoder model "
                          f"(T5); '{backbone.name}' is an encoder MLM")
    words = label_words(task, backbone)
    if words is not None:
        backbone.label_token_ids(words)  # fails early on colliding label words


def score_prompt(model: str, store: PromptStore, prompt_ref: str, task_ref: str, *,
                 limit: int | None = 1000, batch_size: int = 64, data_dir: str | None = None,
                 max_new_tokens: int = 64) -> dict[str, float]:
    """Evaluate one prompt (store id or file) on a task's evaluation split, in one process."""
    task = get_task(task_ref)
    prompt, _ = store.load(prompt_ref)
    backbone = load_backbone(model)
    backbone.check_prompt(prompt)
    check_task_fits(task, backbone)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone.to(device)
    prompt = prompt.to(device)
    rows = load_split(task, "eval", limit=limit, data_dir=data_dir).to_list()
    return evaluate(backbone, lambda b: prompt.expand(b, -1, -1), task, rows, batch_size,
                    max_new_tokens)
