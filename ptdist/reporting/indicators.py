"""The report's indicator section: how well each indicator predicts zero-shot transfer, each
seed a replicate, and the indicators compared pairwise on the same targets and seeds
(`ptdist.neurons.correlation`)."""

from __future__ import annotations

from pathlib import Path

from ptdist.neurons.correlation import (CALIBRATED_PAIRS, CALIBRATED_SOURCES,
                                        CALIBRATED_TARGETS, MIN_SOURCES, SeedCoefficients,
                                        by_strength, correlation_row, global_estimate,
                                        paired_per_target, per_target_estimate,
                                        stored_coefficients, why_no_interval)
from ptdist.reporting.figures import layerwise_figure
from ptdist.reporting.sections import Section, estimate_row, short_name
from ptdist.statistics import Interval, verdict, with_basis
from ptdist.store import Store
from ptdist.store.layout import segment
from ptdist.store.results import CorrelationRow
from ptdist.store.tables import write_records


PHRASES = {"higher": "higher than", "lower": "lower than",
           "not distinguishable": "not distinguishable from",
           "too few": "not tested against (too few targets of their own)"}


def indicator_section(store: Store, model: str, folder: Path) -> Section:
    if not store.layout.correlation(model).exists():
        return Section()
    name, who = segment(model), short_name(model)
    found, left_out = stored_coefficients(store, model)
    rows = by_strength([correlation_row(model, k, c, ", ".join(left_out))
                        for k, c in found.items()])
    write_records(folder / f"correlation_{name}.parquet", CorrelationRow, rows)
    layerwise_figure(rows, folder / f"layerwise_ON_{name}.png")
    shown = [r for r in rows if not r.indicator.startswith("ON_layer")]
    per_target = {r.indicator: per_target_estimate(found[r.indicator]) for r in shown}
    overall = {r.indicator: global_estimate(found[r.indicator]) for r in shown}
    lines = [f"## Transferability indicators: {who}\n",
             "Spearman's rho between each indicator and relative transfer, computed within "
             "each seed (a seed's prompts are one replicate) and averaged over seeds: per "
             "target (the paper's protocol: across the sources of each target, averaged over "
             "targets; it ranks the indicators) and over all pairs of a seed. An interval is a "
             "t-interval over seeds, given only where it holds its coverage: the seeds' "
             "prompts started independently (so each seed's source is compared with the "
             f"target's prompt of its own seed), and each seed's coefficient rests on "
             f"{CALIBRATED_TARGETS} targets of {CALIBRATED_SOURCES}+ sources (per target) or "
             f"{CALIBRATED_PAIRS} pairs (global).\n",
             "| indicator | Spearman per target | targets x sources | Spearman global | "
             "pairs | seeds |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.indicator} | {per_target[r.indicator]} | {r.targets} x {r.sources}+ | "
              f"{overall[r.indicator]} | {r.pairs} | {r.seeds} |" for r in shown]
    section = Section()
    section.estimates = [
        estimate_row("indicators", model, f"{r.indicator} per-target Spearman",
                     per_target[r.indicator], found[r.indicator].per_target_means())
        for r in shown] + [
        estimate_row("indicators", model, f"{r.indicator} global Spearman", overall[r.indicator],
                     found[r.indicator].global_) for r in shown]
    if shown:
        section.findings.append(_ranking(who, model, shown, found, per_target, section))
    if left_out:
        section.findings.append(f"{who}: the correlations leave out the pairs of "
                                f"{', '.join(left_out)}.")
    lines += [f"\n{f}" for f in section.findings]
    lines.append(f"\n![layer-wise ON](layerwise_ON_{name}.png)\n")
    section.body = "\n".join(lines)
    return section


def _ranking(who: str, model: str, shown: list[CorrelationRow],
             found: dict[str, SeedCoefficients], per_target: dict[str, Interval],
             section: Section) -> str:
    """The best indicator by the mean per-target coefficient, tested against each other one
    on the same targets and seeds (a paired t over seeds), and where ON ranks."""
    defined = [r.indicator for r in shown if r.spearman_per_target is not None]
    if not defined:
        return (f"{who}: no target has {MIN_SOURCES} or more counted sources in a seed, so no "
                "per-target correlation is defined and the indicators are not ranked.")
    best = defined[0]
    on = (f"ON ranks {defined.index('ON') + 1} of {len(defined)}" if "ON" in defined
          else "ON has no per-target value") + " (the paper found ON best)"
    head = (f"{who}: by the mean per-target Spearman over seeds, the strongest indicator is "
            f"{best} ({with_basis(per_target[best])})")
    reason = why_no_interval(found[best])
    if reason:
        return (f"{head}; the ranking is not tested: too few to compare ({reason}). {on}.")
    words: dict[str, list[str]] = {}
    for other in defined[1:]:
        d = paired_per_target(found[best], found[other])
        section.estimates.append(estimate_row("indicators", model,
                                              f"{best} - {other} per-target Spearman", d))
        said = verdict(d)
        if said == "too few":
            words.setdefault("too few", []).append(other)
        else:
            words.setdefault(said, []).append(f"{other} ({d}, {d.basis('seed')})")
    apart = "; ".join(f"{PHRASES[k]} {', '.join(v)}" for k, v in words.items())
    return (f"{head}; paired with each other indicator on the same targets and seeds (the "
            f"difference of per-target coefficients): {apart}. {on}.")
