"""The zero-shot transfer matrix of one model: every source task's prompt on every target task.

Relative performance = score of the source prompt on the target / score of the target's own
prompt on the target (x 100), both measured here on the same evaluation rows, so the diagonal
is 100 % by construction. Each target's evaluation data is passed once for all source prompts
(`predict_each`: prompts as a batch dimension); targets run as parallel Ray tasks.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from ptdist.errors import PtdistError
from ptdist.store.keys import model_key
from ptdist.store.prompts import PromptStore
from ptdist.store.tables import write_table
from ptdist.tasks import TaskRecord, get_task
from ptdist.transfer.selection import best_prompts

MATRIX_SCHEMA = pa.schema([
    ("model", pa.string()), ("source_task", pa.string()), ("source_type", pa.string()),
    ("source_prompt", pa.string()), ("target_task", pa.string()), ("target_type", pa.string()),
    ("metric", pa.string()), ("score", pa.float64()), ("own_score", pa.float64()),
    ("relative", pa.float64()), ("eval_examples", pa.int64()),
])


@dataclass
class MatrixResult:
    rows: list[dict]
    table: Path
    heatmap: Path
    tasks: list[str]  # in the matrix's order: grouped by task type


def model_dir(store: PromptStore, model: str) -> Path:
    """Where a model's transfer results go: ``<store>/transfer/<model, as a file name>``."""
    return store.root / "transfer" / model_key(model)


def score_sources(model: str, target: str, prompts: torch.Tensor, *, data_dir: str | None,
                  limit: int | None, batch_size: int, max_length: int,
                  max_new_tokens: int) -> tuple[list[dict[str, float]], int]:
    """Metrics of each prompt ``[K, L, d]`` on ``target``'s evaluation rows, and their count."""
    from ptdist.training.evaluation import eval_backbone, score_prompts

    return score_prompts(eval_backbone(model, max_length), target, prompts, data_dir=data_dir,
                         limit=limit, batch_size=batch_size, max_new_tokens=max_new_tokens)


def transfer_matrix(model: str, tasks: list[str], store: PromptStore, *,
                    data_dir: str | None = None, eval_limit: int | None = 1000,
                    batch_size: int = 64, max_new_tokens: int = 64, on_ray: bool = True,
                    address: str | None = None, cpus: float = 1, gpus: float = 0,
                    among: Collection[str] | None = None) -> MatrixResult:
    """Evaluate the best stored prompt of each task (of the store, or ``among`` these prompt
    ids) on every task; write the table and the heatmap under `model_dir`."""
    if len(set(tasks)) < 2:
        raise PtdistError("a transfer matrix needs at least two different tasks")
    manifests = best_prompts(store, model, tasks, among)
    records = {get_task(t).name: get_task(t) for t in tasks}
    refs = {get_task(t).name: t for t in tasks}
    order = sorted(manifests, key=lambda name: (records[name].type, name))
    shapes = {name: tuple(manifests[name]["shape"]) for name in order}
    if len(set(shapes.values())) > 1:
        raise PtdistError("the source prompts differ in shape (" + ", ".join(
            f"{n}: {list(s)}" for n, s in shapes.items()) + "); the matrix evaluates them as "
            "one batch, so select prompts of one length (train them with the same "
            "--prompt-length)")
    prompts = torch.stack([store.load(manifests[n]["id"])[0] for n in order])
    jobs = {name: dict(model=model, target=refs[name], prompts=prompts,
                       data_dir=data_dir, limit=eval_limit, batch_size=batch_size,
                       max_length=manifests[name]["config"]["max_length"],
                       max_new_tokens=max_new_tokens) for name in order}
    print(f"transfer matrix of {model}: {len(order)} source prompts x {len(order)} target tasks"
          f"{' on Ray' if on_ray else ''}", file=sys.stderr, flush=True)
    scores = _run_on_ray(jobs, address, cpus, gpus) if on_ray else \
        {name: score_sources(**job) for name, job in jobs.items()}
    rows = _rows(model, order, records, manifests, scores)
    out = model_dir(store, model)
    table = write_table(out / "matrix.parquet", rows, MATRIX_SCHEMA)
    heatmap = _heatmap(model, order, records, rows, out / "matrix.png")
    return MatrixResult(rows, table, heatmap, order)


def _run_on_ray(jobs: dict[str, dict], address: str | None, cpus: float,
                gpus: float) -> dict[str, tuple[list[dict], int]]:
    import ray

    from ptdist.orchestration.cluster import ray_session

    with ray_session(address):
        remote = ray.remote(_score_in_worker).options(num_cpus=cpus, num_gpus=gpus)
        pending = {remote.remote(job): name for name, job in jobs.items()}
        results, t0 = {}, time.time()
        while pending:
            done, _ = ray.wait(list(pending))
            name = pending.pop(done[0])
            results[name] = ray.get(done[0])
            print(f"[transfer +{time.time() - t0:.0f}s] target {name} scored "
                  f"({len(results)}/{len(jobs)})", file=sys.stderr, flush=True)
    return results


def _score_in_worker(job: dict) -> tuple[list[dict], int]:
    from ptdist.runtime import quiet_libraries

    quiet_libraries()
    return score_sources(**job)


def _rows(model: str, order: list[str], records: dict[str, TaskRecord],
          manifests: dict[str, dict], scores: dict[str, tuple[list[dict], int]]) -> list[dict]:
    rows = []
    for j, target in enumerate(order):
        metric = records[target].primary_metric
        per_source, n = scores[target]
        own = per_source[j][metric]
        for i, source in enumerate(order):
            score = per_source[i][metric]
            rows.append({
                "model": model, "source_task": source, "source_type": records[source].type,
                "source_prompt": manifests[source]["id"], "target_task": target,
                "target_type": records[target].type, "metric": metric, "score": score,
                "own_score": own, "relative": 100.0 * score / own if own else None,
                "eval_examples": n})
    return rows


def _heatmap(model: str, order: list[str], records: dict[str, TaskRecord], rows: list[dict],
             path: Path) -> Path:
    from ptdist.reporting.figures import grouped_heatmap

    index = {name: i for i, name in enumerate(order)}
    values = np.full((len(order), len(order)), np.nan)
    for r in rows:
        if r["relative"] is not None:
            values[index[r["source_task"]], index[r["target_task"]]] = r["relative"]
    return grouped_heatmap(values, order, order, [records[n].type for n in order],
                           f"zero-shot transfer, {model}", path, "relative performance (%)")
