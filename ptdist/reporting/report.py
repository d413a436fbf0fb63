"""The replication report: one folder (`StoreLayout.report_dir`) with report.md, its figures,
and every table as Parquet.

Findings are computed from the tables, never written by hand, and worded from 95 % percentile
bootstrap intervals (`ptdist.statistics`): one quantity is "higher" or "lower" than another
only when their intervals do not overlap; otherwise they are "not distinguishable". Every
score is given with its spread over seeds. A task whose own prompts are not clearly above the
majority class and a random prompt on the matrix's rows (`MatrixRow.clearly_above`) is flagged,
and none of its rows counts toward a finding. The quantities behind the findings are written to
``estimates.parquet`` (`EstimateRow`).

Where the paper reports a figure for the same setting it would sit beside ours; no reference
figures are bundled yet, and the report says so rather than leave a gap unexplained.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ptdist.neurons.correlation import MIN_SOURCES, by_strength
from ptdist.orchestration.runs import plan_sweep
from ptdist.orchestration.study import Study
from ptdist.reporting.costs import cost_section
from ptdist.reporting.figures import layerwise_figure, matrix_figure, tpt_figure
from ptdist.statistics import RESAMPLES, Interval, bootstrap, compare
from ptdist.store import Store
from ptdist.store.atomic import atomic_write_text
from ptdist.store.layout import TPT_CURVES, TPT_SUMMARY, segment
from ptdist.store.results import (CorrelationRow, EstimateRow, MatrixRow, ProjectorEvalRow,
                                  PromptRow, TptCurveRow, TptSummaryRow)
from ptdist.store.tables import read_records, write_records
from ptdist.tasks import get_task
from ptdist.transfer.matrix import cells, unusable_tasks

FLAG = "⚠"
WORDS = {"higher": "higher than", "lower": "lower than",
         "not distinguishable": "not distinguishable from"}


@dataclass
class Section:
    body: str = ""
    findings: list[str] = field(default_factory=list)
    estimates: list[EstimateRow] = field(default_factory=list)


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
    matrices = {m.name: read_records(store.layout.matrix(m.name), MatrixRow)
                for m in study.spec.models if store.layout.matrix(m.name).exists()}
    flagged = {model: unusable_tasks(rows) for model, rows in matrices.items()}
    sections = [_prompt_section(study, store, folder, matrices)]
    for model in study.spec.models:
        if model.name in matrices:
            sections.append(_transfer_section(model.name, matrices[model.name], folder))
        sections.append(_indicator_section(store, model.name, folder))
    if projectors:
        sections.append(_cross_model_section(store, projectors, folder, flagged))
    if study.tpt is not None:
        sections.append(_tpt_section(study, store, projectors, folder, flagged))
    sections.append(Section(cost_section(store, study.spec.name, folder)))
    write_records(folder / "estimates.parquet", EstimateRow,
                  [e for s in sections for e in s.estimates])
    findings = [f for s in sections for f in s.findings]
    text = "\n".join([_header(study), READING, "## Findings\n",
                      "\n".join(f"- {f}" for f in findings) or "- (no analysis stage ran)",
                      "", *(s.body for s in sections if s.body), PAPER_NOTE])
    return atomic_write_text(folder / "report.md", text)


READING = (f"How to read it: a score is the mean over seeds ± their standard deviation; an "
           f"interval [low, high] is a 95 % percentile bootstrap ({RESAMPLES} resamples, fixed "
           "seed). Two quantities are called higher or lower only when their intervals do not "
           f"overlap, otherwise not distinguishable. {FLAG} marks a task whose own prompts are "
           "not clearly above both the majority class and a random prompt (a paired bootstrap "
           "over the evaluation rows, `docs/replicate.md`): no finding counts its rows.\n")

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


# --- prompt tuning -------------------------------------------------------------------------

def _prompt_section(study: Study, store: Store, folder: Path,
                    matrices: dict[str, list[MatrixRow]]) -> Section:
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
    lines = ["## Prompt tuning\n",
             "Best evaluation score of each run (mean ± sd over runs), then on the transfer "
             "matrix's rows: the own prompts' mean score, the majority class, a random prompt "
             "(mean over seeds), and whether every own prompt is clearly above both (the "
             "lowest 95 % lower bound of its margin over each, in points).\n",
             "| model | task | metric | best score | runs | on matrix rows | majority class | "
             "random prompt | clearly above both |", "|---|---|---|---|---|---|---|---|---|"]
    findings = []
    for (model, task, metric), scores in sorted(groups.items()):
        own = [r for r in matrices.get(model, []) if r.source_task == r.target_task == task]
        lines.append(f"| {short_name(model)} | {task} | {metric} | {_spread(scores)} | "
                     f"{len(scores)} | {_baselines(own)} |")
    for model, matrix in matrices.items():
        bad = unusable_tasks(matrix)
        if bad:
            findings.append(f"{FLAG} {short_name(model)}: the own prompts of {', '.join(bad)} "
                            "are not clearly above the majority class and a random prompt; "
                            "no finding below counts their rows.")
    if not matrices:
        lines.append("\nBaselines come with the transfer matrix, which needs two tasks or more.")
    return Section("\n".join(lines) + "\n", findings)


def _spread(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _baselines(own: list[MatrixRow]) -> str:
    """The matrix columns of a task's own prompts: score, majority, random, verdict."""
    if not own:
        return "- | - | - | -"
    score = statistics.mean(r.score for r in own)
    chance = "-" if own[0].chance is None else f"{own[0].chance:.1f}"
    margins = [f"{min(r.above_chance_low for r in own):+.1f}"] if own[0].chance is not None \
        else []
    margins.append(f"{min(r.above_random_low for r in own):+.1f}")
    verdict = "yes" if all(r.clearly_above for r in own) else f"{FLAG} no"
    return (f"{score:.1f} | {chance} | {own[0].random_score:.1f} | {verdict} "
            f"({' / '.join(margins)})")


# --- zero-shot transfer --------------------------------------------------------------------

def _transfer_section(model: str, rows: list[MatrixRow], folder: Path) -> Section:
    name, who = segment(model), short_name(model)
    write_records(folder / f"matrix_{name}.parquet", MatrixRow, rows)
    matrix_figure(rows, folder / f"matrix_{name}.png")
    matrix_figure(rows, folder / f"matrix_normalized_{name}.png", "normalized")
    left_out = unusable_tasks(rows)
    types = {r.source_task: r.source_type for r in rows}
    relative, normalized = cells(rows), cells(rows, "normalized")
    pairs = [(s, t) for s, t in relative if s != t]
    counted = [(s, t) for s, t in pairs if s not in left_out and t not in left_out]
    section = Section()
    lines = [f"## Zero-shot transfer: {who}\n",
             f"![transfer matrix](matrix_{name}.png) "
             f"![chance-normalised](matrix_normalized_{name}.png)\n",
             "Relative transfer = 100 x score / the target's own prompts' mean score; "
             "chance-normalised = 100 x (score - majority class) / (own - majority class), "
             "so 0 is the majority class and 100 the own prompts. Each cell: mean ± sd over "
             "the source task's prompts.\n",
             "| source | target | same type | relative (%) | chance-normalised (%) | counted |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {s} | {t} | {'yes' if types[s] == types[t] else 'no'} | "
              f"{_spread(relative[s, t]) if relative[s, t] else '-'} | "
              f"{_spread(normalized[s, t]) if normalized[s, t] else '-'} | "
              f"{'yes' if (s, t) in counted else FLAG + ' no'} |" for s, t in pairs]
    for values, label in ((relative, "relative"), (normalized, "chance-normalised")):
        same = [statistics.mean(values[p]) for p in counted if values[p]
                and types[p[0]] == types[p[1]]]
        cross = [statistics.mean(values[p]) for p in counted if values[p]
                 and types[p[0]] != types[p[1]]]
        section.findings.append(_same_vs_cross(who, label, same, cross, section.estimates,
                                               model))
    if left_out:
        section.findings.append(f"{who}: {len(pairs) - len(counted)} of {len(pairs)} task "
                                f"pairs left out (involving {', '.join(left_out)}).")
    section.body = "\n".join(lines + [""] + section.findings) + "\n"
    return section


def _same_vs_cross(who: str, label: str, same: list[float], cross: list[float],
                   estimates: list[EstimateRow], model: str) -> str:
    if not same or not cross:
        missing = "same-type" if not same else "cross-type"
        return (f"{who}: {label} transfer: no counted {missing} task pair, so same-type and "
                "cross-type transfer cannot be compared.")
    a, b = bootstrap(same), bootstrap(cross)
    estimates += [_estimate("transfer", model, f"same-type {label} transfer", a, len(same)),
                  _estimate("transfer", model, f"cross-type {label} transfer", b, len(cross))]
    return (f"{who}: {label} zero-shot transfer between tasks of the same type is {a} % "
            f"({len(same)} task pairs), across types {b} % ({len(cross)} pairs): same-type "
            f"transfer is {WORDS[compare(a, b)]} cross-type.")


def _estimate(section: str, model: str, quantity: str, interval: Interval,
              n: int) -> EstimateRow:
    return EstimateRow(section=section, model=model, quantity=quantity,
                       estimate=interval.estimate,
                       low=interval.low if interval.defined else None,
                       high=interval.high if interval.defined else None, n=n)


# --- indicators ----------------------------------------------------------------------------

def _indicator_section(store: Store, model: str, folder: Path) -> Section:
    table = store.layout.correlation(model)
    if not table.exists():
        return Section()
    name, who = segment(model), short_name(model)
    rows = read_records(table, CorrelationRow)
    write_records(folder / f"correlation_{name}.parquet", CorrelationRow, rows)
    layerwise_figure(rows, folder / f"layerwise_ON_{name}.png")
    shown = [r for r in by_strength(rows) if not r.indicator.startswith("ON_layer")]
    per_target = {r.indicator: Interval.of(r.spearman_per_target, r.per_target_low,
                                           r.per_target_high) for r in shown}
    overall = {r.indicator: Interval.of(r.spearman_global, r.global_low, r.global_high)
               for r in shown}
    lines = [f"## Transferability indicators: {who}\n",
             "Spearman's rho between each indicator and relative transfer: per target (the "
             "paper's protocol: across the sources of each target, averaged over targets; it "
             "ranks the indicators) and over all pairs, each with its 95 % interval.\n",
             "| indicator | Spearman per target | targets | Spearman global | pairs |",
             "|---|---|---|---|---|"]
    lines += [f"| {r.indicator} | {per_target[r.indicator]} | {r.targets} | "
              f"{overall[r.indicator]} | {r.pairs} |" for r in shown]
    section = Section()
    section.estimates = [_estimate("indicators", model, f"{r.indicator} per-target Spearman",
                                   per_target[r.indicator], r.targets) for r in shown] + \
        [_estimate("indicators", model, f"{r.indicator} global Spearman",
                   overall[r.indicator], r.pairs) for r in shown]
    if shown:
        section.findings.append(_best_indicator(who, shown, per_target, overall))
    if shown and shown[0].left_out:
        section.findings.append(f"{who}: the correlations leave out the pairs of "
                                f"{shown[0].left_out}.")
    lines += [f"\n{f}" for f in section.findings]
    lines.append(f"\n![layer-wise ON](layerwise_ON_{name}.png)\n")
    section.body = "\n".join(lines)
    return section


def _best_indicator(who: str, shown: list[CorrelationRow], per_target: dict[str, Interval],
                    overall: dict[str, Interval]) -> str:
    defined = [r.indicator for r in shown if r.spearman_per_target is not None]
    if not defined:
        finite = [k for k in overall if math.isfinite(overall[k].estimate)]
        strongest = (f"over all pairs the strongest indicator is {finite[0]} (Spearman "
                     f"{overall[finite[0]]})" if finite else
                     f"with {shown[0].pairs} counted (source, target) pairs no global "
                     "correlation is defined either")
        return (f"{who}: no target has {MIN_SOURCES} or more counted sources, so no "
                f"per-target correlation is defined; {strongest}.")
    best = defined[0]
    tied = [k for k in defined[1:] if compare(per_target[best], per_target[k])
            == "not distinguishable"]
    rank = defined.index("ON") + 1 if "ON" in defined else None
    on = (f"ON ranks {rank} of {len(defined)}" if rank else "ON has no per-target value") + \
        " (the paper found ON best)"
    apart = (f"not distinguishable from {', '.join(tied)} (overlapping intervals)" if tied
             else "its interval is above every other indicator's")
    return (f"{who}: by the mean per-target Spearman, the indicator that best predicts "
            f"zero-shot transfer is {best} ({per_target[best]}, {shown[0].targets} targets); "
            f"it is {apart}. {on}.")


# --- cross-model transfer ------------------------------------------------------------------

def _cross_model_section(store: Store, projectors: list[str], folder: Path,
                         flagged: dict[str, list[str]]) -> Section:
    rows = [r for pid in projectors if store.layout.projector_eval(pid).exists()
            for r in read_records(store.layout.projector_eval(pid), ProjectorEvalRow)]
    write_records(folder / "cross_model.parquet", ProjectorEvalRow, rows)

    def counted(r: ProjectorEvalRow) -> bool:
        return all(r.task not in flagged.get(m, []) for m in (r.source_model, r.target_model))

    lines = ["## Cross-model transfer\n",
             "| source -> target | mode | task | trained on | projected | untrained | own "
             "| relative | counted |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {short_name(r.source_model)} -> {short_name(r.target_model)} | "
              f"{r.mode} | {r.task} | {_trained_on(r)} | {r.score:.1f} | "
              f"{r.untrained_score:.1f} | {r.own_score:.1f} | {_num(r.relative)} | "
              f"{'yes' if counted(r) else FLAG + ' no'} |" for r in rows]
    section = Section()
    groups = (("their training tasks", lambda r: r.in_training),
              ("held-out tasks of a training type", lambda r: not r.in_training
               and r.type_in_training),
              ("held-out tasks of other types", lambda r: not r.type_in_training))
    for label, member in groups:
        mine = [r for r in rows if member(r) and counted(r) and r.relative is not None]
        if not mine:
            continue
        relative = bootstrap([r.relative for r in mine])
        gain = bootstrap([r.score - r.untrained_score for r in mine])
        zero = Interval(0.0, 0.0, 0.0)
        section.estimates += [
            _estimate("cross_model", "", f"relative transfer on {label}", relative, len(mine)),
            _estimate("cross_model", "", f"gain over the untrained projector on {label}",
                      gain, len(mine))]
        section.findings.append(
            f"Projected prompts on {label} reach {relative} % of the target's own prompt "
            f"({len(mine)} cases); their gain over the untrained projector, {gain} points, "
            f"is {WORDS[compare(gain, zero)]} zero.")
    section.body = "\n".join(lines + [""] + section.findings) + "\n"
    return section


def _trained_on(r: ProjectorEvalRow) -> str:
    if r.in_training:
        return "this task"
    return "its type" if r.type_in_training else "other types"


# --- TPT -----------------------------------------------------------------------------------

def _tpt_section(study: Study, store: Store, projectors: list[str], folder: Path,
                 flagged: dict[str, list[str]]) -> Section:
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
        return Section()
    write_records(folder / "tpt.parquet", TptSummaryRow, rows)
    lines = ["## Transferred prompts as initialisation (TPT)\n",
             "One run each (the study's first seed): speed-ups have no interval. Every run is "
             "evaluated at step 0, before its first update. " + _schedule_words(rows) + "\n",
             "| model | target | run | step 0 | best | steps to vanilla's best | speed-up | "
             "steps to tolerance x vanilla's best | speed-up (tolerance) |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {short_name(r.model)} | {r.target_task} | {r.run} | {_num(r.start_score, 1)} "
              f"| {r.best_score:.1f} | {_num(r.steps_to_vanilla_best, 0)} | {_num(r.speedup)} "
              f"| {_num(r.steps_to_tolerance, 0)} ({r.tolerance:.0%}) | "
              f"{_num(r.speedup_tolerance)} |" for r in rows]
    findings = []
    for r in rows:
        if r.run == "vanilla":
            continue
        if r.target_task in flagged.get(r.model, []):
            findings.append(f"{FLAG} {short_name(r.model)}, {r.target_task}, {r.run}: not "
                            f"counted (the target's own prompts are not clearly above chance).")
            continue
        findings.append(f"{short_name(r.model)}, {r.target_task}, {r.run}: "
                        f"{_speedup_words(r.speedup, 'its best score')}; "
                        f"{_speedup_words(r.speedup_tolerance, f'{r.tolerance:.0%} of it')} "
                        f"(best {r.best_score:.1f} vs vanilla {r.vanilla_best:.1f}).")
    return Section("\n".join(lines + [""] + figures) + "\n", findings)


def _schedule_words(rows: list[TptSummaryRow]) -> str:
    """Under which learning-rate schedule the comparisons ran (each under one, `tpt.py`)."""
    words = {"constant": "a constant learning rate (the paper's)",
             "linear": "a learning rate decaying linearly to 0 at the last step (under which "
                       "vanilla PT's best tends to be its last evaluation)"}
    models: dict[str, set[str]] = {}
    for r in rows:
        models.setdefault(r.schedule, set()).add(short_name(r.model))
    if len(models) == 1:
        return f"Vanilla and TPT runs train under one schedule: {words[next(iter(models))]}."
    return "Vanilla and TPT runs of a comparison train under one schedule: " + "; ".join(
        f"{words[s]} ({', '.join(sorted(m))})" for s, m in sorted(models.items())) + "."


def _speedup_words(speedup: float | None, what: str) -> str:
    if speedup is None:
        return f"never reaches vanilla PT's {what}"
    if speedup == float("inf"):
        return f"reaches vanilla PT's {what} at step 0, before any update"
    if speedup == 0:
        return f"is slower to reach vanilla PT's {what}, which vanilla PT has at step 0"
    if speedup == 1:
        return f"reaches vanilla PT's {what} at the same step"
    return (f"reaches vanilla PT's {what} in {speedup:.2f}x fewer steps" if speedup > 1
            else f"needs {1 / speedup:.2f}x the steps of vanilla PT to reach {what}")


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
