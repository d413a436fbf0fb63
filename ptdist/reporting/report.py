"""The replication report: one folder (`StoreLayout.report_dir`) with report.md, its figures,
and every table as Parquet.

Findings are computed from the tables, never written by hand: mean relative transfer between
tasks of the same type vs of different types, and which indicator correlates best with
transfer. Where the paper reports a figure for the same setting it would sit beside ours; no
reference figures are bundled yet, and the report says so rather than leave a gap unexplained.
Every table is read as its typed record (`ptdist.store.results`); the report names its own
files inside its folder.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from ptdist.neurons.correlation import by_strength
from ptdist.orchestration.runs import plan_sweep
from ptdist.orchestration.study import Study
from ptdist.reporting.costs import cost_section
from ptdist.reporting.figures import layerwise_figure, matrix_figure, tpt_figure
from ptdist.store import Store
from ptdist.store.atomic import atomic_write_text
from ptdist.store.layout import TPT_CURVES, TPT_SUMMARY, segment
from ptdist.store.results import (CorrelationRow, MatrixRow, ProjectorEvalRow, PromptRow,
                                  TptCurveRow, TptSummaryRow)
from ptdist.store.tables import read_records, write_records
from ptdist.tasks import get_task

Section = tuple[str, list[str]]  # Markdown, and the findings it states


def short_name(model: str) -> str:
    """A model name for people: a local folder by its name, a packaged model by its package."""
    if model.startswith("pkg:"):
        return model[len("pkg:"):].split("/")[0]
    return os.path.basename(model.rstrip("/")) if os.path.isabs(model) else model


def write_report(study: Study, projectors: list[str]) -> Path:
    """Write the study's report.md and its figures and tables; returns the Markdown path."""
    store = Store(study.spec.storage_path)
    folder = store.layout.report_dir(study.spec.name)
    folder.mkdir(parents=True, exist_ok=True)
    sections: list[Section] = [(_prompt_section(study, store, folder), [])]
    for model in study.spec.models:
        sections.append(_transfer_section(store, model.name, folder))
        sections.append(_indicator_section(store, model.name, folder))
    if projectors:
        sections.append(_cross_model_section(store, projectors, folder))
    if study.tpt is not None:
        sections.append(_tpt_section(study, store, projectors, folder))
    sections.append((cost_section(store, study.spec.name, folder), []))
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


def _prompt_section(study: Study, store: Store, folder: Path) -> str:
    rows = []
    for _, pid in plan_sweep(study.spec, store):
        if store.prompts.has(pid):
            m = store.prompts.manifest(pid)
            rows.append(PromptRow(model=m.model, task=m.task, task_type=m.task_type,
                                  seed=m.seed, init=m.init, prompt_id=pid, metric=m.metric,
                                  score=m.score, best_step=m.best_step))
    write_records(folder / "prompts.parquet", PromptRow, rows)
    groups: dict[tuple[str, str, str], list[float]] = {}
    for r in rows:
        groups.setdefault((r.model, r.task, r.metric), []).append(r.score)
    lines = ["## Prompt tuning\n", "| model | task | metric | mean | min | max | runs |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {short_name(m)} | {t} | {metric} | {statistics.mean(v):.1f} | {min(v):.1f} | "
              f"{max(v):.1f} | {len(v)} |" for (m, t, metric), v in sorted(groups.items())]
    return "\n".join(lines) + "\n"


def _transfer_section(store: Store, model: str, folder: Path) -> Section:
    table = store.layout.matrix(model)
    if not table.exists():
        return "", []
    rows = read_records(table, MatrixRow)
    name = segment(model)
    write_records(folder / f"matrix_{name}.parquet", MatrixRow, rows)
    matrix_figure(rows, folder / f"matrix_{name}.png")
    off = [r for r in rows if r.source_task != r.target_task and r.relative is not None]
    same = [r.relative for r in off if r.source_type == r.target_type]
    cross = [r.relative for r in off if r.source_type != r.target_type]
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


def _indicator_section(store: Store, model: str, folder: Path) -> Section:
    table = store.layout.correlation(model)
    if not table.exists():
        return "", []
    name = segment(model)
    rows = read_records(table, CorrelationRow)
    write_records(folder / f"correlation_{name}.parquet", CorrelationRow, rows)
    layerwise_figure(rows, folder / f"layerwise_ON_{name}.png")
    shown = [r for r in by_strength(rows) if not r.indicator.startswith("ON_layer")]
    lines = [f"## Transferability indicators: {short_name(model)}\n",
             "| indicator | Spearman per target | targets | Spearman global | pairs |",
             "|---|---|---|---|---|"]
    lines += [f"| {r.indicator} | {_num(r.spearman_per_target)} | {r.targets} | "
              f"{_num(r.spearman_global)} | {r.pairs} |" for r in shown]
    findings = []
    if shown:
        on_rank = next(i for i, r in enumerate(shown, 1) if r.indicator == "ON")
        findings.append(f"{short_name(model)}: the indicator that correlates best with "
                        f"zero-shot transfer is {shown[0].indicator} (global Spearman "
                        f"{_num(shown[0].spearman_global)}); ON ranks {on_rank} of "
                        f"{len(shown)} (the paper found ON best).")
    lines += [f"\n{f}" for f in findings]
    lines.append(f"\n![layer-wise ON](layerwise_ON_{name}.png)\n")
    return "\n".join(lines), findings


def _cross_model_section(store: Store, projectors: list[str], folder: Path) -> Section:
    rows = [r for pid in projectors if store.layout.projector_eval(pid).exists()
            for r in read_records(store.layout.projector_eval(pid), ProjectorEvalRow)]
    write_records(folder / "cross_model.parquet", ProjectorEvalRow, rows)
    lines = ["## Cross-model transfer\n",
             "| source -> target | mode | task | trained on it | projected | untrained | own "
             "| relative |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {short_name(r.source_model)} -> {short_name(r.target_model)} | "
              f"{r.mode} | {r.task} | {'yes' if r.in_training else 'no'} | "
              f"{r.score:.1f} | {r.untrained_score:.1f} | {r.own_score:.1f} | "
              f"{_num(r.relative)} |" for r in rows]
    findings = []
    for trained in (True, False):
        mine = [r for r in rows if r.in_training == trained and r.relative is not None]
        if mine:
            beats = sum(r.score > r.untrained_score for r in mine)
            findings.append(
                f"Projected prompts on {'their training' if trained else 'held-out'} tasks "
                f"reach {statistics.mean(r.relative for r in mine):.1f} % of the target's "
                f"own prompt on average ({len(mine)} cases) and beat the untrained projector in "
                f"{beats} of {len(mine)}.")
    return "\n".join(lines + [""] + findings) + "\n", findings


def _tpt_section(study: Study, store: Store, projectors: list[str],
                 folder: Path) -> Section:
    """Speed-ups of TPT_task (per model) and TPT_model (per projector), with their curves."""
    targets = [get_task(t).name for t in study.tpt.targets]
    places = [(segment(m.name), {"model": m.name}) for m in study.spec.models]
    places += [(pid, {"projector": pid}) for pid in projectors]
    rows, figures = [], []
    for label, owner in places:
        for target in targets:
            tpt_dir = store.layout.tpt_dir(target, **owner)
            if (tpt_dir / TPT_SUMMARY).exists():
                summary = read_records(tpt_dir / TPT_SUMMARY, TptSummaryRow)
                rows += summary
                figure = f"tpt_{label}_{target}.png"
                tpt_figure(read_records(tpt_dir / TPT_CURVES, TptCurveRow), summary,
                           folder / figure)
                figures.append(f"![TPT on {target}]({figure})")
    if not rows:
        return "", []
    write_records(folder / "tpt.parquet", TptSummaryRow, rows)
    lines = ["## Transferred prompts as initialisation (TPT)\n",
             "| model | target | run | best | steps to vanilla's best | speed-up |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {short_name(r.model)} | {r.target_task} | {r.run} | {r.best_score:.1f} | "
              f"{r.steps_to_vanilla_best if r.steps_to_vanilla_best is not None else '-'}"
              f" | {_num(r.speedup)} |" for r in rows]
    findings = [f"{short_name(r.model)}, {r.target_task}, {r.run}: "
                f"{_speedup_words(r.speedup)} (best {r.best_score:.1f} vs vanilla "
                f"{r.vanilla_best:.1f})." for r in rows if r.run != "vanilla"]
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
