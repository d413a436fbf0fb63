"""The replication report: one folder with report.md, its figures, and every table as Parquet.

Findings are computed from the tables, never written by hand: mean relative transfer between
tasks of the same type vs of different types, and which indicator correlates best with
transfer. Where the paper reports a figure for the same setting it would sit beside ours; no
reference figures are bundled yet, and the report says so rather than leave a gap unexplained.
"""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path

import pyarrow as pa

from ptdist.neurons.correlation import by_strength
from ptdist.neurons.pairs import neurons_dir
from ptdist.orchestration.study import Study
from ptdist.orchestration.sweep import plan_sweep
from ptdist.projection.evaluation import EVAL_SCHEMA, eval_table
from ptdist.store.atomic import atomic_write_text
from ptdist.store.keys import model_key
from ptdist.store.projectors import ProjectorStore
from ptdist.store.prompts import PromptStore
from ptdist.store.tables import read_table, write_table
from ptdist.tasks import get_task
from ptdist.transfer.matrix import model_dir
from ptdist.transfer.tpt import SUMMARY_SCHEMA

PROMPT_SCHEMA = pa.schema([
    ("model", pa.string()), ("task", pa.string()), ("task_type", pa.string()),
    ("seed", pa.int64()), ("init", pa.string()), ("prompt_id", pa.string()),
    ("metric", pa.string()), ("score", pa.float64()), ("best_step", pa.int64()),
])


def write_report(study: Study, projectors: list[str], folder: Path) -> Path:
    """Write ``folder``/report.md and its figures and tables; returns the Markdown path."""
    store = PromptStore(study.spec.storage_path)
    folder.mkdir(parents=True, exist_ok=True)
    sections = [_header(study), _prompt_section(study, store, folder)]
    for model in study.spec.models:
        sections.append(_transfer_section(store, model.name, folder))
        sections.append(_indicator_section(store, model.name, folder))
    if projectors:
        sections.append(_cross_model_section(store, projectors, folder))
    if study.tpt is not None:
        sections.append(_tpt_section(study, store, projectors, folder))
    sections.append("## The paper's figures\n\nNo reference figures of the paper are bundled "
                    "with ptdist yet, so none is shown beside these results.\n")
    return atomic_write_text(folder / "report.md", "\n".join(s for s in sections if s))


def _header(study: Study) -> str:
    spec = study.spec
    tasks = ", ".join(f"{get_task(t).name} ({get_task(t).type})" for t in spec.tasks)
    return (f"# Replication report: {spec.name}\n\n"
            f"- models: {', '.join(m.name for m in spec.models)}\n- tasks: {tasks}\n"
            f"- seeds: {', '.join(map(str, spec.seeds))}; inits: {', '.join(spec.inits)}\n"
            f"- store: `{spec.storage_path}`\n")


def _prompt_section(study: Study, store: PromptStore, folder: Path) -> str:
    rows = []
    for run, pid in plan_sweep(study.spec, store):
        if store.has(pid):
            m = store.manifest(pid)
            rows.append({"model": m["model"], "task": m["task"], "task_type": m["task_type"],
                         "seed": m["seed"], "init": m["init"], "prompt_id": pid,
                         "metric": m["metric"], "score": m["score"],
                         "best_step": m["best_step"]})
    write_table(folder / "prompts.parquet", rows, PROMPT_SCHEMA)
    groups: dict[tuple[str, str, str], list[float]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["task"], r["metric"]), []).append(r["score"])
    lines = ["## Prompt tuning\n", "| model | task | metric | mean | min | max | runs |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {m} | {t} | {metric} | {statistics.mean(v):.1f} | {min(v):.1f} | "
              f"{max(v):.1f} | {len(v)} |" for (m, t, metric), v in sorted(groups.items())]
    return "\n".join(lines) + "\n"


def _transfer_section(store: PromptStore, model: str, folder: Path) -> str:
    table = model_dir(store, model) / "matrix.parquet"
    if not table.exists():
        return ""
    rows = read_table(table)
    name = model_key(model)
    shutil.copy(table, folder / f"matrix_{name}.parquet")
    shutil.copy(table.with_suffix(".png"), folder / f"matrix_{name}.png")
    off = [r for r in rows if r["source_task"] != r["target_task"] and r["relative"] is not None]
    same = [r["relative"] for r in off if r["source_type"] == r["target_type"]]
    cross = [r["relative"] for r in off if r["source_type"] != r["target_type"]]
    finding = (f"Same-type transfer averages {statistics.mean(same):.1f} % of the target's own "
               f"prompt ({len(same)} pairs); cross-type {statistics.mean(cross):.1f} % "
               f"({len(cross)} pairs): same-type tasks transfer "
               f"{'better' if statistics.mean(same) > statistics.mean(cross) else 'no better'} "
               "here." if same and cross else
               "The tasks are all of one type or all of different types, so same-type and "
               "cross-type transfer cannot be compared.")
    return (f"## Zero-shot transfer: {model}\n\n![transfer matrix](matrix_{name}.png)\n\n"
            f"{finding}\n")


def _indicator_section(store: PromptStore, model: str, folder: Path) -> str:
    table = neurons_dir(store, model) / "correlation.parquet"
    if not table.exists():
        return ""
    name = model_key(model)
    shutil.copy(table, folder / f"correlation_{name}.parquet")
    shutil.copy(table.parent / "layerwise_ON.png", folder / f"layerwise_ON_{name}.png")
    rows = by_strength(read_table(table))
    shown = [r for r in rows if not r["indicator"].startswith("ON_layer")]
    lines = [f"## Transferability indicators: {model}\n",
             "| indicator | Spearman per target | targets | Spearman global | pairs |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['indicator']} | {_num(r['spearman_per_target'])} | {r['targets']} | "
              f"{_num(r['spearman_global'])} | {r['pairs']} |" for r in shown]
    best = shown[0] if shown else None
    if best is not None:
        lines.append(f"\nBest indicator by global Spearman correlation with zero-shot "
                     f"transfer: **{best['indicator']}** ({_num(best['spearman_global'])}).")
    lines.append(f"\n![layer-wise ON](layerwise_ON_{name}.png)\n")
    return "\n".join(lines)


def _cross_model_section(store: PromptStore, projectors: list[str], folder: Path) -> str:
    projector_store = ProjectorStore(store.root)
    rows = [r for pid in projectors if eval_table(projector_store, pid).exists()
            for r in read_table(eval_table(projector_store, pid))]
    write_table(folder / "cross_model.parquet", rows, EVAL_SCHEMA)
    lines = ["## Cross-model transfer\n",
             "| source -> target | mode | task | trained on it | projected | untrained | own "
             "| relative |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['source_model']} -> {r['target_model']} | {r['mode']} | {r['task']} | "
              f"{'yes' if r['in_training'] else 'no'} | {r['score']:.1f} | "
              f"{r['untrained_score']:.1f} | {r['own_score']:.1f} | {_num(r['relative'])} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def _tpt_section(study: Study, store: PromptStore, projectors: list[str], folder: Path) -> str:
    """Speed-ups of TPT_task (per model) and TPT_model (per projector), with their curves."""
    targets = [get_task(t).name for t in study.tpt.targets]
    places = [(model_key(m.name), model_dir(store, m.name) / "tpt") for m in study.spec.models]
    places += [(pid, ProjectorStore(store.root).folder(pid) / "tpt") for pid in projectors]
    rows, figures = [], []
    for label, tpt_dir in places:
        for target in targets:
            summary = tpt_dir / target / "summary.parquet"
            if summary.exists():
                rows += read_table(summary)
                figure = f"tpt_{label}_{target}.png"
                shutil.copy(summary.with_name("curves.png"), folder / figure)
                figures.append(f"![TPT on {target}]({figure})")
    if not rows:
        return ""
    write_table(folder / "tpt.parquet", rows, SUMMARY_SCHEMA)
    lines = ["## Transferred prompts as initialisation (TPT)\n",
             "| model | target | run | best | steps to vanilla's best | speed-up |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['target_task']} | {r['run']} | {r['best_score']:.1f} | "
              f"{r['steps_to_vanilla_best'] if r['steps_to_vanilla_best'] is not None else '-'}"
              f" | {_num(r['speedup'])} |" for r in rows]
    return "\n".join(lines + [""] + figures) + "\n"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
