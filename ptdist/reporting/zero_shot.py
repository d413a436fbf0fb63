"""The report's zero-shot transfer section: the matrix with each cell's seeds, and same-type
against cross-type transfer, compared seed by seed.

Each seed is one replicate: its same-type (and cross-type) transfer is the mean of its counted
cells of that kind, and the two are compared by a paired t-test over the seeds. Whether a
difference says anything about skill is read from the chance-normalised view (0 = the majority
class): same-type prompts carry more of a target's skill only when same-type transfer is itself
above the majority class. A difference that rests on cells below the majority class says that
those prompts do worse than predicting one class, and is reported as that.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from ptdist.reporting.figures import matrix_figure
from ptdist.reporting.sections import FLAG, Section, estimate_row, seeds_spread, short_name
from ptdist.statistics import Interval, over_replicates, paired, too_few, verdict, with_basis
from ptdist.store.layout import segment
from ptdist.store.results import MatrixRow
from ptdist.store.tables import write_records
from ptdist.transfer.matrix import cells, group_replicates, unusable_tasks

Pair = tuple[str, str]


def transfer_section(model: str, rows: list[MatrixRow], folder: Path) -> Section:
    name, who = segment(model), short_name(model)
    write_records(folder / f"matrix_{name}.parquet", MatrixRow, rows)
    matrix_figure(rows, folder / f"matrix_{name}.png")
    matrix_figure(rows, folder / f"matrix_normalized_{name}.png", "normalized")
    left_out = unusable_tasks(rows)
    types = {r.source_task: r.source_type for r in rows}
    relative, normalized = cells(rows), cells(rows, "normalized")
    pairs = [(s, t) for s, t in relative if s != t]
    counted = [(s, t) for s, t in pairs if s not in left_out and t not in left_out]
    lines = [f"## Zero-shot transfer: {who}\n",
             f"![transfer matrix](matrix_{name}.png) "
             f"![chance-normalised](matrix_normalized_{name}.png)\n",
             "Each source prompt is compared with the target's own prompt of its seed: "
             "relative transfer = 100 x score / own score; chance-normalised = 100 x (score - "
             "majority class) / (own - majority class), so 0 is the majority class and 100 the "
             "own prompt. Each cell: mean ± sd over seeds, then each seed's value.\n",
             "| source | target | same type | relative (%) | chance-normalised (%) | counted |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {s} | {t} | {'yes' if types[s] == types[t] else 'no'} | "
              f"{seeds_spread(relative[s, t])} | {seeds_spread(normalized[s, t])} | "
              f"{'yes' if (s, t) in counted else FLAG + ' no'} |" for s, t in pairs]
    same = [p for p in counted if types[p[0]] == types[p[1]]]
    cross = [p for p in counted if types[p[0]] != types[p[1]]]
    section = Section()
    section.findings.append(same_vs_cross(who, model, relative, normalized, same, cross,
                                          section))
    if left_out:
        section.findings.append(f"{who}: {len(pairs) - len(counted)} of {len(pairs)} task "
                                f"pairs left out (involving {', '.join(left_out)}).")
    section.body = "\n".join(lines + [""] + section.findings) + "\n"
    return section


def same_vs_cross(who: str, model: str, relative: dict[Pair, dict[int, float]],
                  normalized: dict[Pair, dict[int, float]], same: list[Pair],
                  cross: list[Pair], section: Section) -> str:
    """The finding on same-type against cross-type transfer (its estimates added to
    ``section``)."""
    if not same or not cross:
        missing = "same-type" if not same else "cross-type"
        return (f"{who}: no counted {missing} task pair, so same-type and cross-type "
                "transfer cannot be compared.")
    views = {}
    for label, values in (("chance-normalised", normalized), ("relative", relative)):
        a, b = group_replicates(values, same), group_replicates(values, cross)
        if a and b:
            views[label] = (over_replicates(list(a.values())), over_replicates(list(b.values())),
                            paired(a, b))
            section.estimates += [
                estimate_row("transfer", model, f"same-type {label} transfer", views[label][0],
                             a),
                estimate_row("transfer", model, f"cross-type {label} transfer",
                             views[label][1], b),
                estimate_row("transfer", model, f"same-type - cross-type {label} transfer",
                             views[label][2], {k: a[k] - b[k] for k in a if k in b})]
    rests = (f"{who}: same-type vs cross-type zero-shot transfer, each seed a replicate "
             f"(same-type: {', '.join(f'{s}->{t}' for s, t in same)}; cross-type: "
             f"{len(cross)} pairs)")
    if "relative" not in views:
        return f"{rests}: no seed has every pair's cell, so they cannot be compared."
    numbers = "; ".join(f"{label}: same-type {with_basis(a, suffix=' %')}, cross-type "
                        f"{with_basis(b, suffix=' %')}, difference "
                        f"{with_basis(d, suffix=' points')}"
                        for label, (a, b, d) in views.items())
    return f"{rests}. {numbers}. {_reading(views, normalized, cross, same)}"


def _reading(views: dict[str, tuple[Interval, Interval, Interval]],
             normalized: dict[Pair, dict[int, float]], cross: list[Pair],
             same: list[Pair]) -> str:
    """What the comparison says, decided from the paired difference and, where there is a
    majority class, from where each kind of transfer stands against it."""
    key = "chance-normalised" if "chance-normalised" in views else "relative"
    a, b, d = views[key]
    said = verdict(d)
    if said == "too few":
        return f"Same-type and cross-type transfer: {too_few(d.n, 'seed')}."
    if key == "relative":
        words = "not distinguishable from" if said == "not distinguishable" else f"{said} than"
        return (f"Same-type transfer is {words} cross-type (relative transfer: the targets "
                "have no majority class to tell skill from one).")
    standing = (f"same-type transfer is {_against_chance(a)} the majority class, cross-type "
                f"transfer {_against_chance(b)} it")
    if said == "not distinguishable":
        return f"Same-type and cross-type transfer are not distinguishable ({standing})."
    ahead, kinds = (a, ("same-type", "cross-type")) if said == "higher" else \
        (b, ("cross-type", "same-type"))
    if _against_chance(ahead) == "above":
        return (f"{kinds[0].capitalize()} prompts carry more of the target's skill than "
                f"{kinds[1]} ones ({standing}).")
    below = [f"{s}->{t} ({statistics.mean(normalized[s, t].values()):.1f} %)"
             for s, t in (cross if kinds[1] == "cross-type" else same)
             if normalized[s, t] and statistics.mean(normalized[s, t].values()) <= 0]
    return (f"This is not a difference in skill ({standing}): the difference says that "
            f"{kinds[1]} prompts do worse than predicting the majority class"
            + (f" (cells at or below it: {', '.join(below)})" if below else "")
            + f", not that {kinds[0]} prompts carry skill.")


def _against_chance(interval: Interval) -> str:
    """Where chance-normalised transfer stands against the majority class (0)."""
    return {"higher": "above", "lower": "below", "too few": "not tested against",
            "not distinguishable": "not distinguishable from"}[verdict(interval)]
