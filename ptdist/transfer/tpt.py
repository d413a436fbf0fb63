"""TPT_task: prompt tuning on a target task initialised from another task's prompt (the prompt
only: optimizer state, schedule and step counter start fresh, as for any ``prompt:`` init),
run beside vanilla prompt tuning, with the speed-up read off their learning curves:

    speed-up = steps vanilla PT needs to reach its best evaluation score
               / steps TPT needs to first reach that score

The runs are one sweep (target tasks x inits [random, prompt:SOURCE...]) on Ray, so they are
scheduled, resumed and skipped like any sweep. TPT_model (`ptdist.projection.tpt`) is the same
measurement with a projected prompt of another model as the start.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from ptdist.errors import PtdistError
from ptdist.orchestration import parse_spec, require_no_failures, run_sweep
from ptdist.orchestration.spec import init_for
from ptdist.store.keys import model_key
from ptdist.store.prompts import PromptStore
from ptdist.store.tables import write_table
from ptdist.tasks import get_task
from ptdist.transfer.matrix import model_dir
from ptdist.transfer.selection import resolve_source

CURVE_SCHEMA = pa.schema([
    ("model", pa.string()), ("target_task", pa.string()), ("run", pa.string()),
    ("source_task", pa.string()), ("prompt_id", pa.string()), ("step", pa.int64()),
    ("score", pa.float64()), ("time_s", pa.float64()),
])
SUMMARY_SCHEMA = pa.schema([
    ("model", pa.string()), ("target_task", pa.string()), ("run", pa.string()),
    ("source_task", pa.string()), ("source_prompt", pa.string()), ("prompt_id", pa.string()),
    ("metric", pa.string()), ("best_score", pa.float64()), ("best_step", pa.int64()),
    ("vanilla_best", pa.float64()), ("steps_to_vanilla_best", pa.int64()),
    ("time_to_vanilla_best_s", pa.float64()), ("speedup", pa.float64()),
])


@dataclass
class TptResult:
    summary: list[dict]
    folders: list[Path]  # one per target: curves.parquet, summary.parquet, curves.png


def first_reach(history: list[dict], metric: str, threshold: float) -> dict | None:
    """The first evaluation of a learning curve that scores at least ``threshold``."""
    return next((h for h in history if h[metric] >= threshold), None)


def speedup_rows(vanilla: dict, runs: list[tuple[str, dict | None, dict]]) -> list[dict]:
    """Summary rows for the vanilla manifest and each (label, source manifest, TPT manifest)."""
    metric = vanilla["metric"]
    best = max(h[metric] for h in vanilla["history"])
    vanilla_hit = first_reach(vanilla["history"], metric, best)
    rows = []
    for label, source, manifest in [("vanilla", None, vanilla), *runs]:
        hit = first_reach(manifest["history"], metric, best)
        rows.append({
            "model": vanilla["model"], "target_task": vanilla["task"], "run": label,
            "source_task": source["task"] if source else None,
            "source_prompt": source["id"] if source else None, "prompt_id": manifest["id"],
            "metric": metric, "best_score": manifest["score"], "best_step": manifest["best_step"],
            "vanilla_best": best, "steps_to_vanilla_best": hit["step"] if hit else None,
            "time_to_vanilla_best_s": hit["time_s"] if hit else None,
            "speedup": vanilla_hit["step"] / hit["step"] if hit else None})
    return rows


@dataclass(frozen=True)
class TptSource:
    """One kind of TPT run: its label, the sweep init it starts from (``{task}`` stands for
    the target task), and per target task the manifest of the prompt it comes from (whose task
    and id the summary reports)."""

    label: str
    init: str
    prompts: dict[str, dict]


def run_tpt(model: str, targets: list[str], sources: list[str], store: PromptStore,
            train: dict, among: Collection[str] | None = None, **sweep: Any) -> TptResult:
    """TPT_task: vanilla PT and TPT from each source (a task's best prompt, ``among`` these
    prompt ids if given, or a prompt id) on each target; ``train`` holds the runs' settings
    (steps, eval_every, lr, seed...); ``sweep``: data_dir, ds_config, resources, address (as
    for `tpt_sweep`)."""
    names = [get_task(t).name for t in targets]
    runs = [TptSource(f"tpt from {m['task']}", f"prompt:{m['id']}", dict.fromkeys(names, m))
            for m in (resolve_source(store, model, s, among) for s in sources)]
    return tpt_sweep(model, targets, runs, store, train, model_dir(store, model) / "tpt",
                     f"tpt-{model_key(model)}", **sweep)


def tpt_sweep(model: str, targets: list[str], sources: list[TptSource], store: PromptStore,
              train: dict, out: Path, name: str, *, data_dir: str | None = None,
              ds_config: str = "zero0", resources: dict | None = None,
              address: str | None = None) -> TptResult:
    """Vanilla PT and each kind of TPT run on each target, as one sweep called ``name``; curves
    and speed-ups under ``out/<target>/``."""
    lengths = {m["shape"][0] for source in sources for m in source.prompts.values()}
    if len(lengths) > 1 or ("prompt_length" in train and train["prompt_length"] not in lengths):
        raise PtdistError(f"the source prompts have length(s) {sorted(lengths)}; TPT starts from "
                          "them, so every source and --prompt-length must agree")
    train = dict(train)
    seed = train.pop("seed", 0)
    spec = parse_spec({
        "name": name, "storage_path": str(store.root),
        "data_dir": data_dir, "tasks": targets, "seeds": [seed],
        "inits": ["random"] + [source.init for source in sources],
        "train": dict(train, prompt_length=lengths.pop()),
        "models": {model: {"ds_config": ds_config, "resources": resources or {}}}})
    outcome = run_sweep(spec, address=address)
    require_no_failures(outcome)
    by_run = {(get_task(r["task"]).name, r["init"]): r["prompt_id"] for r in outcome.rows}
    summary, folders = [], []
    for ref in targets:
        target = get_task(ref).name
        vanilla = store.manifest(by_run[(target, "random")])
        runs = [(source.label, source.prompts[target],
                 store.manifest(by_run[(target, init_for(source.init, ref))]))
                for source in sources]
        rows = speedup_rows(vanilla, runs)
        folders.append(_write_target(out / target, model, target, vanilla, runs, rows))
        summary += rows
    return TptResult(summary, folders)


def _write_target(folder: Path, model: str, target: str, vanilla: dict,
                  runs: list[tuple[str, dict | None, dict]], rows: list[dict]) -> Path:
    from ptdist.reporting.figures import learning_curves

    metric = vanilla["metric"]
    curves = [{"model": model, "target_task": target, "run": label,
               "source_task": source["task"] if source else None, "prompt_id": m["id"],
               "step": h["step"], "score": h[metric], "time_s": h["time_s"]}
              for label, source, m in [("vanilla", None, vanilla), *runs] for h in m["history"]]
    write_table(folder / "curves.parquet", curves, CURVE_SCHEMA)
    write_table(folder / "summary.parquet", rows, SUMMARY_SCHEMA)
    speedups = {r["run"]: r["speedup"] for r in rows}
    lines = {
        label + ("" if label == "vanilla" else
                 f" (speed-up {speedups[label]:.2f}x)" if speedups[label] else " (not reached)"):
        ([h["step"] for h in m["history"]], [h[metric] for h in m["history"]])
        for label, _, m in [("vanilla", None, vanilla), *runs]}
    learning_curves(lines, metric, f"{target} on {model}: vanilla PT vs TPT",
                    folder / "curves.png", hline=rows[0]["vanilla_best"])
    return folder
