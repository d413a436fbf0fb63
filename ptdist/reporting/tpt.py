"""The report's TPT section: transferred prompts as initialisation against vanilla prompt tuning,
run by run and seed by seed, with the evaluation grid that bounds every speed-up and the area
under the learning curves (`ptdist.transfer.tpt`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ptdist.orchestration.spec.study_spec import Study
from ptdist.reporting.figures import tpt_figure
from ptdist.reporting.sections import FLAG, Section, estimate_row, num, short_name
from ptdist.statistics import over_replicates, with_basis
from ptdist.store import Store
from ptdist.store.layout import TPT_CURVES, TPT_SUMMARY, segment
from ptdist.store.results import TptCurveRow, TptSummaryRow
from ptdist.store.tables import read_records, write_records
from ptdist.tasks import get_task
from ptdist.transfer.tpt import compared_areas, evaluation_grid, run_seeds


def tpt_section(study: Study, store: Store, projectors: list[str], folder: Path,
                flagged: dict[str, list[str]]) -> Section:
    """Speed-ups and curve areas of TPT_task (per model) and TPT_model (per projector)."""
    targets = [get_task(t).name for t in study.tpt.targets]
    places = [(segment(m.name), {"model": m.name}) for m in study.spec.models]
    places += [(pid, {"projector": pid}) for pid in projectors]
    rows, curves, figures, seed = [], {}, [], {}
    for label, owner in places:
        for target in targets:
            tpt_dir = store.layout.tpt_dir(target, **owner)
            if (tpt_dir / TPT_SUMMARY).exists():
                summary = read_records(tpt_dir / TPT_SUMMARY, TptSummaryRow)
                found = read_records(tpt_dir / TPT_CURVES, TptCurveRow)
                rows += summary
                for c in found:
                    steps, scores = curves.setdefault(c.prompt_id, ([], []))
                    steps.append(c.step)
                    scores.append(c.score)
                seed.update(run_seeds(store, found))
                figure = f"tpt_{label}_{target}.png"
                tpt_figure(found, summary, folder / figure, seed)
                figures.append(f"![TPT on {target}]({figure})")
    if not rows:
        return Section()
    write_records(folder / "tpt.parquet", TptSummaryRow, rows)
    vanilla = {(r.model, r.target_task, seed[r.prompt_id]): r for r in rows if r.run == "vanilla"}
    areas = {r.prompt_id: compared_areas(
        curves[r.prompt_id], curves[vanilla[r.model, r.target_task, seed[r.prompt_id]].prompt_id])
        for r in rows}
    lines = ["## Transferred prompts as initialisation (TPT)\n",
             "Every run is evaluated at step 0, before its first update, then on the grid "
             "named in each finding: steps-to-target is known only to the nearest evaluation. "
             "Area: the learning curve's mean score over the steps both it and vanilla PT "
             "cover (the area under it, divided by the steps). " + _schedule_words(rows) + "\n",
             "| model | target | run | seed | step 0 | best | steps to vanilla's best | speed-up "
             "| steps to tolerance x vanilla's best | speed-up (tolerance) | area | vanilla's "
             "area |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {short_name(r.model)} | {r.target_task} | {r.run} | {seed[r.prompt_id]} | "
              f"{num(r.start_score, 1)} | {r.best_score:.1f} | {num(r.steps_to_vanilla_best, 0)} "
              f"| {num(r.speedup)} | {num(r.steps_to_tolerance, 0)} ({r.tolerance:.0%}) | "
              f"{num(r.speedup_tolerance)} | {areas[r.prompt_id][0]:.1f} | "
              f"{areas[r.prompt_id][1]:.1f} |" for r in rows]
    section = Section()
    runs: dict[tuple[str, str, str], list[TptSummaryRow]] = {}
    for r in rows:
        if r.run != "vanilla":
            runs.setdefault((r.model, r.target_task, r.run), []).append(r)
    for (model, target, run), mine in runs.items():
        if target in flagged.get(model, []):
            section.findings.append(f"{FLAG} {short_name(model)}, {target}, {run}: not "
                                    "counted (the target's own prompts are not clearly above "
                                    "chance).")
            continue
        grid = evaluation_grid(curves[mine[0].prompt_id][0])
        section.findings.append(_finding(model, target, run, mine, seed, areas, grid, section))
    section.body = "\n".join(lines + [""] + figures) + "\n"
    return section


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


def _finding(model: str, target: str, run: str, rows: Sequence[TptSummaryRow],
             seed: dict[str, int], areas: dict[str, tuple[float, float]], grid: str,
             section: Section) -> str:
    who = f"{short_name(model)}, {target}, {run}"
    seeds = [seed[r.prompt_id] for r in rows]
    label = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
    gains = {seed[r.prompt_id]: areas[r.prompt_id][0] - areas[r.prompt_id][1] for r in rows}
    gain = over_replicates(list(gains.values()), "paired t over seeds", test=True)
    section.estimates.append(estimate_row("tpt", model, f"{target}, {run}: area minus "
                                          "vanilla's", gain, gains))
    best_score = "vanilla PT's best score"
    tolerance = f"{rows[0].tolerance:.0%} of {best_score}"
    speed = "; ".join((f"seed {s}: " if len(rows) > 1 else "")
                      + f"{_speedup_words(r.speedup, best_score)}, "
                      f"{_speedup_words(r.speedup_tolerance, tolerance)}"
                      for s, r in zip(seeds, rows))
    mean_area = sum(areas[r.prompt_id][0] for r in rows) / len(rows)
    mean_vanilla = sum(areas[r.prompt_id][1] for r in rows) / len(rows)
    best = ", ".join(f"{r.best_score:.1f} vs {r.vanilla_best:.1f}" for r in rows)
    return (f"{who} ({label}; evaluated {grid}, so each speed-up is a ratio of two evaluation "
            f"steps): {speed}. Area under the learning curve: {mean_area:.1f} vs vanilla's "
            f"{mean_vanilla:.1f}, a difference of {with_basis(gain, suffix=' points')}. Best "
            f"score {best} (vanilla).")


def _speedup_words(speedup: float | None, what: str) -> str:
    """A speed-up to ``what`` (a score of vanilla PT's run) in words."""
    if speedup is None:
        return f"never reaches {what}"
    if speedup == float("inf"):
        return f"reaches {what} at step 0, before any update"
    if speedup == 0:
        return f"is slower to reach {what}, which vanilla PT has at step 0"
    if speedup == 1:
        return f"reaches {what} at the same evaluation as vanilla PT"
    return (f"reaches {what} in {speedup:.2f}x fewer steps" if speedup > 1
            else f"needs {1 / speedup:.2f}x as many steps as vanilla PT to reach {what}")
