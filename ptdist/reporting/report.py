"""The replication report: one folder (`StoreLayout.report_dir`) with report.md, its figures,
and every table as Parquet.

Findings are computed from the tables, never written by hand. The seed is the unit of
replication: a quantity is computed on each seed's prompts and averaged, with a Student-t
interval over the seeds (`ptdist.statistics`); two quantities are compared on the same seeds
(a paired t-test), and one is "higher" or "lower" only when the interval of the difference
excludes 0. Each finding names what it rests on (the cells or runs, n, the test); with too few
replicates it says "too few to compare". A task whose own prompts are not clearly above the
majority class and a random prompt on the matrix's rows (`MatrixRow.clearly_above`) is flagged,
and none of its rows counts toward a finding; a difference that rests on transfer below the
majority class is reported as that, not as skill. The quantities behind the findings are
written to ``estimates.parquet`` (`EstimateRow`). The sections are modules of their own:
`zero_shot`, `indicators`, `cross_model`, `tpt`.

Where the paper reports a figure for the same setting it would sit beside ours; no reference
figures are bundled yet, and the report says so rather than leave a gap unexplained.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from ptdist.orchestration.jobs.runs import plan_sweep
from ptdist.orchestration.spec.study_spec import Study
from ptdist.reporting.cross_model import cross_model_section
from ptdist.reporting.indicators import indicator_section
from ptdist.reporting.sections import FLAG, Section, short_name, spread
from ptdist.reporting.timing import cost_section
from ptdist.reporting.tpt import tpt_section
from ptdist.reporting.zero_shot import transfer_section
from ptdist.statistics import MIN_ROWS, t_quantile
from ptdist.store import Store
from ptdist.store.atomic import atomic_write_text
from ptdist.store.results import EstimateRow, MatrixRow, PromptRow
from ptdist.store.tables import read_records, write_records
from ptdist.tasks import get_task
from ptdist.transfer.matrix import unusable_tasks


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
            sections.append(transfer_section(model.name, matrices[model.name], folder))
        sections.append(indicator_section(store, model.name, folder))
    if projectors:
        sections.append(cross_model_section(store, projectors, folder, flagged))
    if study.tpt is not None:
        sections.append(tpt_section(study, store, projectors, folder, flagged))
    sections.append(Section(cost_section(store, study.spec.name, folder)))
    write_records(folder / "estimates.parquet", EstimateRow,
                  [e for s in sections for e in s.estimates])
    findings = [f for s in sections for f in s.findings]
    text = "\n".join([_header(study), READING, "## Findings\n",
                      "\n".join(f"- {f}" for f in findings) or "- (no analysis stage ran)",
                      "", *(s.body for s in sections if s.body), PAPER_NOTE])
    return atomic_write_text(folder / "report.md", text)


READING = ("How to read it: a seed is one replicate of the study (it trains every task's prompt "
           "once), so each quantity is computed on each seed's prompts and averaged over the "
           "seeds; a score is that mean ± the seeds' standard deviation, often followed by each "
           "seed's value. An interval [low, high] is a 95 % Student-t interval over the seeds "
           f"(n - 1 degrees of freedom: at n = 2 it is the mean ± {t_quantile(1):.1f} x the "
           "half-range), whose coverage is measured by simulation at 2 to 30 seeds "
           "(`docs/replicate.md`). Two quantities are compared on the same seeds (a paired "
           "t-test, its p-value given): one is called higher or lower only when the interval of "
           "the difference excludes 0, otherwise not distinguishable; with one seed a "
           "comparison is too few to compare. A correlation's interval is given only where it "
           "holds its coverage. Chance-normalised transfer puts the majority class at 0: a "
           "difference that rests on transfer below it is reported as that, not as skill. "
           f"{FLAG} marks a task whose own prompts are not clearly above both the majority "
           "class and a random prompt (a paired bootstrap over the evaluation rows, from "
           f"{MIN_ROWS} rows on): no finding counts its rows.\n")

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
                                  score=m.score, best_step=m.best_step, steps=m.steps,
                                  planned_steps=m.config.get("steps")))
    write_records(folder / "prompts.parquet", PromptRow, rows)
    groups: dict[tuple[str, str, str], list[PromptRow]] = {}
    for r in rows:
        groups.setdefault((r.model, r.task, r.metric), []).append(r)
    lines = ["## Prompt tuning\n",
             "Best evaluation score of each run (mean ± sd over runs), the runs that stopped "
             "early (their curve had flattened: no new best in `patience` evaluations from "
             "`min_steps` on; the runs whose whole curves TPT compares never stop early) with "
             "the step they stopped at, then on the transfer matrix's rows: the own prompts' "
             "mean score, the majority class, a random prompt (mean over seeds), and whether "
             "every own prompt is clearly above both (the lowest 95 % lower bound of its "
             "margin over each, in points: a paired bootstrap over the evaluation rows).\n",
             "| model | task | metric | best score | runs | stopped early | on matrix rows | "
             "majority class | random prompt | clearly above both |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    findings = []
    for (model, task, metric), runs in sorted(groups.items()):
        own = [r for r in matrices.get(model, []) if r.source_task == r.target_task == task]
        lines.append(f"| {short_name(model)} | {task} | {metric} | "
                     f"{spread([r.score for r in runs])} | {len(runs)} | {_stopped(runs)} | "
                     f"{_baselines(own)} |")
    for model, matrix in matrices.items():
        bad = unusable_tasks(matrix)
        if bad:
            findings.append(f"{FLAG} {short_name(model)}: the own prompts of {', '.join(bad)} "
                            "are not clearly above the majority class and a random prompt; "
                            "no finding below counts their rows.")
    if not matrices:
        lines.append("\nBaselines come with the transfer matrix, which needs two tasks or more.")
    return Section("\n".join(lines) + "\n", findings)


def _stopped(runs: list[PromptRow]) -> str:
    """The runs that stopped early: "seed 1 at 200 of 300", or "-"."""
    early = [f"seed {r.seed} at {r.steps} of {r.planned_steps}" for r in sorted(
        runs, key=lambda r: r.seed) if None not in (r.steps, r.planned_steps)
        and r.steps < r.planned_steps]
    return ", ".join(early) or "-"


def _baselines(own: list[MatrixRow]) -> str:
    """The matrix columns of a task's own prompts: score, majority, random, verdict."""
    if not own:
        return "- | - | - | -"
    score = statistics.mean(r.score for r in own)
    chance = "-" if own[0].chance is None else f"{own[0].chance:.1f}"
    lows = ([[r.above_chance_low for r in own]] if own[0].chance is not None else []) + \
        [[r.above_random_low for r in own]]
    margins = " / ".join("?" if None in low else f"{min(low):+.1f}" for low in lows)
    rows = own[0].eval_examples
    verdict = "yes" if all(r.clearly_above for r in own) else f"{FLAG} no"
    margins = f"too few to tell: {rows} evaluation rows" if rows < MIN_ROWS else \
        f"{margins}; {rows} rows"
    return f"{score:.1f} | {chance} | {own[0].random_score:.1f} | {verdict} ({margins})"


