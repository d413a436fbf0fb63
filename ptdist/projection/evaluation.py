"""Cross-model transfer of a projector: the source model's prompts, projected, zero-shot on the
target model.

For each task the table holds the projected prompt's score, the score of the same source
prompt through the untrained projector (the projector's starting point, same seed), and the
target model's own prompt's score, all on the same evaluation rows; relative = projected /
own x 100, as in the zero-shot transfer matrix. The distance columns are the mean squared error
to the target's own prompt: on tasks outside the training set they are the held-out distance.
"""

from __future__ import annotations

import sys
from collections.abc import Collection
from pathlib import Path

import pyarrow as pa
import torch

from ptdist.projection.projector import Projector
from ptdist.projection.training import initial_projector, shape_of
from ptdist.store.projectors import ProjectorStore
from ptdist.store.prompts import PromptStore, write_prompt_file
from ptdist.store.tables import read_table, write_table
from ptdist.tasks import get_task
from ptdist.transfer.selection import best_prompts

EVAL_SCHEMA = pa.schema([
    ("projector", pa.string()), ("source_model", pa.string()), ("target_model", pa.string()),
    ("mode", pa.string()), ("variant", pa.string()), ("task", pa.string()),
    ("task_type", pa.string()), ("in_training", pa.bool_()), ("source_prompt", pa.string()),
    ("target_prompt", pa.string()), ("metric", pa.string()), ("score", pa.float64()),
    ("untrained_score", pa.float64()), ("own_score", pa.float64()),
    ("relative", pa.float64()), ("distance", pa.float64()),
    ("untrained_distance", pa.float64()), ("eval_examples", pa.int64()),
])


def trained_projector(store: ProjectorStore, projector_id: str) -> tuple[Projector, dict]:
    manifest = store.manifest(projector_id)
    projector = Projector(shape_of(manifest))
    projector.load_state_dict(store.weights(projector_id))
    return projector.eval(), manifest


def projected_path(store: ProjectorStore, projector_id: str, task: str) -> Path:
    return store.folder(projector_id) / "projected" / f"{get_task(task).name}.safetensors"


def project_prompts(store_root: str, projector_id: str, tasks: list[str],
                    among: Collection[str] | None = None) -> dict[str, Path]:
    """The source model's best prompt for each task (of the store, or ``among`` these prompt
    ids), projected, as prompt files in the projector's folder (a ``prompt:PATH`` init starts
    TPT_model from one)."""
    projectors = ProjectorStore(store_root)
    projector, manifest = trained_projector(projectors, projector_id)
    sources = best_prompts(PromptStore(store_root), manifest["source_model"], tasks, among)
    paths = {}
    for task in tasks:
        source = sources[get_task(task).name]
        prompt, _ = PromptStore(store_root).load(source["id"])
        with torch.no_grad():
            projected = projector(prompt)
        paths[task] = write_prompt_file(projected_path(projectors, projector_id, task),
                                        projected, {"projector": projector_id,
                                                    "source_prompt": source["id"]})
    return paths


def evaluate_projector(store_root: str, projector_id: str, tasks: list[str], *,
                       data_dir: str | None = None, eval_limit: int | None = 1000,
                       batch_size: int = 64, max_new_tokens: int = 64,
                       among: Collection[str] | None = None) -> list[dict]:
    """Score the projected prompts of ``tasks`` on the target model (both models' best
    prompts from the store, or ``among`` these prompt ids); writes ``eval.parquet`` in the
    projector's folder and returns its rows."""
    from ptdist.training.evaluation import eval_backbone, score_prompts

    projectors, prompts = ProjectorStore(store_root), PromptStore(store_root)
    projector, manifest = trained_projector(projectors, projector_id)
    untrained = initial_projector(projector.shape, manifest["config"]["seed"]).eval()
    # Every missing prompt of either model is named before the target model is loaded.
    sources = best_prompts(prompts, manifest["source_model"], tasks, among)
    owns = best_prompts(prompts, manifest["target_model"], tasks, among)
    paths = project_prompts(store_root, projector_id, tasks, among)
    max_length = max(m["config"]["max_length"] for m in owns.values())
    backbone = eval_backbone(manifest["target_model"], max_length)
    rows = []
    for task in tasks:
        record = get_task(task)
        source, own = sources[record.name], owns[record.name]
        source_prompt = prompts.load(source["id"])[0]
        with torch.no_grad():
            candidates = torch.stack([prompts.load(str(paths[task]))[0],
                                      untrained(source_prompt), prompts.load(own["id"])[0]])
        scores, n = score_prompts(backbone, task, candidates, data_dir=data_dir,
                                  limit=eval_limit, batch_size=batch_size,
                                  max_new_tokens=max_new_tokens)
        metric = record.primary_metric
        projected, base, reference = (s[metric] for s in scores)
        rows.append({
            "projector": projector_id, "source_model": manifest["source_model"],
            "target_model": manifest["target_model"], "mode": manifest["mode"],
            "variant": projector.shape.variant, "task": record.name, "task_type": record.type,
            "in_training": record.name in {get_task(t).name for t in manifest["tasks"]},
            "source_prompt": source["id"], "target_prompt": own["id"], "metric": metric,
            "score": projected, "untrained_score": base, "own_score": reference,
            "relative": 100.0 * projected / reference if reference else None,
            "distance": _mse(candidates[0], candidates[2]),
            "untrained_distance": _mse(candidates[1], candidates[2]), "eval_examples": n})
        print(f"{record.name}: projected {projected:.2f} / untrained projector {base:.2f} / "
              f"own prompt {reference:.2f} ({metric})", file=sys.stderr, flush=True)
    write_table(eval_table(projectors, projector_id), rows, EVAL_SCHEMA)
    return rows


def eval_table(store: ProjectorStore, projector_id: str) -> Path:
    return store.folder(projector_id) / "eval.parquet"


def evaluated(store_root: str, projector_id: str, tasks: list[str]) -> bool:
    """Whether the projector's table already covers ``tasks``."""
    path = eval_table(ProjectorStore(store_root), projector_id)
    if not path.exists():
        return False
    done = {r["task"] for r in read_table(path)}
    return all(get_task(t).name in done for t in tasks)


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.mse_loss(a.float(), b.float()).item()
