"""The report's cross-model section: projected prompts on the target model against the untrained
projector and the majority class.

A projector is one training run, and its evaluation one projected prompt per task, so what one
projector shows is tested on the evaluation rows (paired bootstrap, `ProjectorEvalRow`): that
this projected prompt beats the untrained projector's, and the majority class, on these rows.
How much projector training varies is measured only over several runs of one projector (same
models, mode and tasks: its seeds), with a t-interval over the runs. A projected prompt counts
as carrying skill only when it is clearly above the majority class as well as above the
untrained projector, which often predicts a class below it.
"""

from __future__ import annotations

from pathlib import Path

from ptdist.reporting.sections import FLAG, Section, estimate_row, num, short_name
from ptdist.statistics import (MIN_ROWS, Interval, over_replicates, too_few, verdict,
                               with_basis)
from ptdist.store import Store
from ptdist.store.results import ProjectorEvalRow
from ptdist.store.tables import read_records, write_records

GROUPS = (("on its training tasks (their evaluation rows)", lambda r: r.in_training),
          ("on held-out tasks of a training type", lambda r: not r.in_training
           and r.type_in_training),
          ("on held-out tasks of other types", lambda r: not r.type_in_training))


def cross_model_section(store: Store, projectors: list[str], folder: Path,
                        flagged: dict[str, list[str]]) -> Section:
    rows = [r for pid in projectors if store.layout.projector_eval(pid).exists()
            for r in read_records(store.layout.projector_eval(pid), ProjectorEvalRow)]
    write_records(folder / "cross_model.parquet", ProjectorEvalRow, rows)

    def counted(r: ProjectorEvalRow) -> bool:
        return all(r.task not in flagged.get(m, []) for m in (r.source_model, r.target_model))

    lines = ["## Cross-model transfer\n",
             "Each row is one projector run's projected prompt. Gains are in points of the "
             "task's metric with their 95 % paired-bootstrap interval over the evaluation "
             "rows.\n",
             "| source -> target | mode | task | trained on | projected | untrained | majority "
             "class | own | relative | gain over untrained | over the majority class | "
             "counted |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_table_row(r, counted(r)) for r in rows]
    section = Section()
    runs: dict[tuple, list[ProjectorEvalRow]] = {}
    for r in rows:
        if counted(r):
            runs.setdefault((r.source_model, r.target_model, r.mode, r.variant), []).append(r)
    for (source, target, mode, _), mine in runs.items():
        for label, member in GROUPS:
            chosen = [r for r in mine if member(r)]
            if chosen:
                section.findings.append(_finding(source, target, mode, label, chosen, section))
    section.body = "\n".join(lines + [""] + section.findings) + "\n"
    return section


def _table_row(r: ProjectorEvalRow, counted: bool) -> str:
    above = None if r.chance is None else r.score - r.chance
    return (f"| {short_name(r.source_model)} -> {short_name(r.target_model)} | {r.mode} | "
            f"{r.task} | {_trained_on(r)} | {r.score:.1f} | {r.untrained_score:.1f} | "
            f"{num(r.chance, 1)} | {r.own_score:.1f} | {num(r.relative)} | "
            f"{_gain(r.score - r.untrained_score, r.gain_low, r.gain_high)} | "
            f"{_gain(above, r.above_chance_low, r.above_chance_high)} | "
            f"{'yes' if counted else FLAG + ' no'} |")


def _finding(source: str, target: str, mode: str, label: str, rows: list[ProjectorEvalRow],
             section: Section) -> str:
    """What the projectors of one direction show on one group of tasks: each task on its rows,
    then the gain over the projector's runs."""
    head = f"{short_name(source)} -> {short_name(target)} ({mode}-tuned projector) {label}"
    tasks = "; ".join(_on_rows(r) for r in rows)
    per_run: dict[str, list[float]] = {}
    for r in rows:
        per_run.setdefault(r.projector, []).append(r.score - r.untrained_score)
    gain = over_replicates([sum(g) / len(g) for g in per_run.values()],
                           "t over projector runs", test=True)
    section.estimates.append(estimate_row(
        "cross_model", target, f"{short_name(source)} -> {short_name(target)} gain over the "
        f"untrained projector {label}", gain,
        {pid: sum(g) / len(g) for pid, g in per_run.items()}))
    if gain.defined:
        runs = (f"over {gain.n} projector runs the mean gain over the untrained projector is "
                f"{with_basis(gain, 'projector run', ' points')}: {verdict(gain)}"
                + (" than 0" if verdict(gain) in ("higher", "lower") else ""))
    else:
        runs = (f"how much projector training varies is not measured: "
                f"{too_few(gain.n, 'projector run')}")
    return f"{head}: {tasks}; {runs}."


def _on_rows(r: ProjectorEvalRow) -> str:
    """One projected prompt against the untrained projector and the majority class, decided
    on its evaluation rows."""
    what = (f"{r.task}: {r.score:.1f} vs the untrained projector's {r.untrained_score:.1f}"
            + ("" if r.chance is None else f" and the majority class's {r.chance:.1f}")
            + f" ({num(r.relative, 1)} % of the target's own prompt)")
    if r.gain_low is None or (r.chance is not None and r.above_chance_low is None):
        if r.eval_examples < MIN_ROWS:
            return f"{what}, {too_few(r.eval_examples, 'evaluation row')}"
        return f"{what}, no row-level interval stored (run `ptdist project eval` again)"
    gain = Interval(r.score - r.untrained_score, r.gain_low, r.gain_high)
    rows = f"paired bootstrap over {r.eval_examples} rows"
    if r.chance is None:
        return f"{what}: {verdict(gain)} than the untrained projector ({gain} points, {rows})"
    above = Interval(r.score - r.chance, r.above_chance_low, r.above_chance_high)
    if verdict(above) == "higher" and verdict(gain) == "higher":
        return (f"{what}: above both, by {gain} and {above} points ({rows}): it carries skill "
                "to the target model")
    return (f"{what}: {_words(above)} the majority class ({above} points) and {_words(gain)} "
            f"the untrained projector ({gain} points; {rows}): no skill carried")


def _words(gain: Interval) -> str:
    return {"higher": "above", "lower": "below",
            "not distinguishable": "not distinguishable from"}[verdict(gain)]


def _gain(value: float | None, low: float | None, high: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:+.1f}" + ("" if low is None else f" [{low:+.1f}, {high:+.1f}]")


def _trained_on(r: ProjectorEvalRow) -> str:
    if r.in_training:
        return "this task"
    return "its type" if r.type_in_training else "other types"
