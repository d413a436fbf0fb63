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
from ptdist.store.keys import model_key, short_name
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


Section = tuple[str, list[str]]  # Markdown, and the findings it states


def write_report(study: Study, projectors: list[str], folder: Path) -> Path:
    """Write ``folder``/report.md and its figures and tables; returns the Markdown path."""
    store = PromptStore(study.spec.storage_path)
    folder.mkdir(parents=True, exist_ok=True)
    sections: list[Section] = [(_prompt_section(study, store, folder), [])]
    for model in study.spec.models:
        sections.append(_transfer_section(store, model.name, folder))
        sections.append(_indicator_section(store, model.name, folder))
    if projectors:
        sections.append(_cross_model_section(store, projectors, folder))
    if study.tpt is not None:
        sections.append(_tpt_section(study, store, projectors, folder))
    findings = [f for _, found in sections for f in found]
    text = "\n".join([_header(study), "## Findings\n",
                      "\n".join(f"- {f}" for f in findings) or "- (no analysis stage ran)",
                      "", *(body for body, _ in sections if body), PAPER_NOTE])
    return atomic_write_text(folder / "report.md", text)


PAPER_NOTE = ("## The paper's figures\n\nptdist does not bundle the paper's reported numbers "
              "(they could not be obtained offline when this report format was written), so "
              "none is shown beside these results; compare with the paper's tables for the "
              "same models and tasks.\n")


def _header(study: Study) -> str:
    spec = study.spec
    tasks = ", ".join(f"{get_task(t).name} ({get_task(t).type})" for t in spec.tasks)
    return (f"# Replication report: {spec.name}\n\n"
            f"- models: {', '.join(m.name for m in spec.models)}\n- tasks: {tasks}\n"
            f"- seeds: {', '.join(map(str, spec.seeds))}; inits: {', '.join(spec.inits)}\n"
            f"- store: `{spec.storage_path}`\n"
            "- every finding below is computed from the tables in this folder\n")


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
    lines += [f"| {short_name(m)} | {t} | {metric} | {statistics.mean(v):.1f} | {min(v):.1f} | "
              f"{max(v):.1f} | {len(v)} |" for (m, t, metric), v in sorted(groups.items())]
    return "\n".join(lines) + "\n"


def _transfer_section(store: PromptStore, model: str, folder: Path) -> Section:
    table = model_dir(store, model) / "matrix.parquet"
    if not table.exists():
        return "", []
    rows = read_table(table)
    name = model_key(model)
    shutil.copy(table, folder / f"matrix_{name}.parquet")
    shutil.copy(table.with_suffix(".png"), folder / f"matrix_{name}.png")
    off = [r for r in rows if r["source_task"] != r["target_task"] and r["relative"] is not None]
    same = [r["relative"] for r in off if r["source_type"] == r["target_type"]]
    cross = [r["relative"] for r in off if r["source_type"] != r["target_type"]]
    if same and cross:
        better = "better" if statistics.mean(same) > statistics.mean(cross) else "no better"
        finding = (f"{short_name(model)}: zero-shot transfer between tasks of the same type "
                   f"reaches {statistics.mean(same):.1f} % of the target's own prompt "
                   f"({len(same)} pairs), across types {statistics.mean(cross):.1f} % "
                   f"({len(cross)} pairs): same-type tasks transfer {better} here.")
    else:
        finding = (f"{short_name(model)}: the tasks are all of one type or all of different "
                   "types, so same-type and cross-type transfer cannot be compared.")
    return (f"## Zero-shot transfer: {short_name(model)}\n\n"
            f"![transfer matrix](matrix_{name}.png)\n\n{finding}\n"), [finding]


def _indicator_section(store: PromptStore, model: str, folder: Path) -> Section:
    table = neurons_dir(store, model) / "correlation.parquet"
    if not table.exists():
        return "", []
    name = model_key(model)
    shutil.copy(table, folder / f"correlation_{name}.parquet")
    shutil.copy(table.parent / "layerwise_ON.png", folder / f"layerwise_ON_{name}.png")
    shown = [r for r in by_strength(read_table(table))
             if not r["indicator"].startswith("ON_layer")]
    lines = [f"## Transferability indicators: {short_name(model)}\n",
             "| indicator | Spearman per target | targets | Spearman global | pairs |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['indicator']} | {_num(r['spearman_per_target'])} | {r['targets']} | "
              f"{_num(r['spearman_global'])} | {r['pairs']} |" for r in shown]
    findings = []
    if shown:
        on_rank = next(i for i, r in enumerate(shown, 1) if r["indicator"] == "ON")
        findings.append(f"{short_name(model)}: the indicator that correlates best with "
                        f"zero-shot transfer is {shown[0]['indicator']} (global Spearman "
                        f"{_num(shown[0]['spearman_global'])}); ON ranks {on_rank} of "
                        f"{len(shown)} (the paper found ON best).")
    lines += [f"\n{f}" for f in findings]
    lines.append(f"\n![layer-wise ON](layerwise_ON_{name}.png)\n")
    return "\n".join(lines), findings


def _cross_model_section(store: PromptStore, projectors: list[str], folder: Path) -> Section:
    projector_store = ProjectorStore(store.root)
    rows = [r for pid in projectors if eval_table(projector_store, pid).exists()
            for r in read_table(eval_table(projector_store, pid))]
    write_table(folder / "cross_model.parquet", rows, EVAL_SCHEMA)
    lines = ["## Cross-model transfer\n",
             "| source -> target | mode | task | trained on it | projected | untrained | own "
             "| relative |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {short_name(r['source_model'])} -> {short_name(r['target_model'])} | "
              f"{r['mode']} | {r['task']} | {'yes' if r['in_training'] else 'no'} | "
              f"{r['score']:.1f} | {r['untrained_score']:.1f} | {r['own_score']:.1f} | "
              f"{_num(r['relative'])} |" for r in rows]
    findings = []
    for trained in (True, False):
        mine = [r for r in rows if r["in_training"] == trained and r["relative"] is not None]
        if mine:
            beats = sum(r["score"] > r["untrained_score"] for r in mine)
            findings.append(
                f"Projected prompts on {'their training' if trained else 'held-out'} tasks "
                f"reach {statistics.mean(r['relative'] for r in mine):.1f} % of the target's "
                f"own prompt on average ({len(mine)} cases) and beat the untrained projector in "
                f"{beats} of {len(mine)}.")
    return "\n".join(lines + [""] + findings) + "\n", findings


def _tpt_section(study: Study, store: PromptStore, projectors: list[str],
                 folder: Path) -> Section:
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
        return "", []
    write_table(folder / "tpt.parquet", rows, SUMMARY_SCHEMA)
    lines = ["## Transferred prompts as initialisation (TPT)\n",
             "| model | target | run | best | steps to vanilla's best | speed-up |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {short_name(r['model'])} | {r['target_task']} | {r['run']} | "
              f"{r['best_score']:.1f} | "
              f"{r['steps_to_vanilla_best'] if r['steps_to_vanilla_best'] is not None else '-'}"
              f" | {_num(r['speedup'])} |" for r in rows]
    findings = [f"{short_name(r['model'])}, {r['target_task']}, {r['run']}: "
                f"{_speedup_words(r['speedup'])} (best {r['best_score']:.1f} vs vanilla "
                f"{r['vanilla_best']:.1f})." for r in rows if r["run"] != "vanilla"]
    return "\n".join(lines + [""] + figures) + "\n", findings


def _speedup_words(speedup: float | None) -> str:
    if not speedup:
        return "never reaches vanilla PT's best score"
    if speedup == 1:
        return "reaches vanilla PT's best score at the same step"
    return (f"reaches vanilla PT's best score in {speedup:.2f}x fewer steps" if speedup > 1
            else f"needs {1 / speedup:.2f}x the steps of vanilla PT to reach its best score")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
