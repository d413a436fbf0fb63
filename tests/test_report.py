"""The report's decisions on stores whose answers are known: the seed is the replicate and its
spread enters every interval, comparisons are paired, one seed is too few to compare, a
difference that rests on transfer below the majority class is not called a difference in
skill, projected prompts are judged against the majority class as well as the untrained
projector, and TPT comes with its evaluation grid and curve areas."""

from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest
import torch

from ptdist.orchestration.jobs.runs import plan_sweep
from ptdist.orchestration.spec.study_spec import load_study
from ptdist.reporting.report import write_report
from ptdist.statistics import t_quantile
from ptdist.store import Store
from ptdist.store.results import (CorrelationRow, IndicatorRow, MatrixRow, ProjectorEvalRow,
                                  TptCurveRow, seed_paired)
from ptdist.store.tables import write_records
from ptdist.tasks import get_task
from ptdist.transfer.tpt import speedup_rows
from tests.test_store import manifest

MODEL = "tiny-roberta"
TASKS = ["sst2", "imdb", "qnli", "mnli"]  # two sentiment, two NLI tasks
CHANCE = 50.0
OWN = {0: 78.0, 1: 82.0}  # every task's own prompt, by seed


def _study(tmp_path, seeds=(0, 1), tpt=False):
    path = tmp_path / "study.yaml"
    stages = "stages: {tpt: {targets: [imdb], sources: [sst2]}}\n" if tpt else ""
    path.write_text(f"name: synthetic\nstorage_path: {tmp_path / 'store'}\n"
                    f"tasks: [{', '.join(TASKS)}]\nseeds: [{', '.join(map(str, seeds))}]\n"
                    f"models: {{{MODEL}: {{}}}}\n{stages}")
    return load_study(path)


def _prompts(study) -> tuple[Store, dict[tuple[str, int], str]]:
    store = Store(study.spec.storage_path)
    sources = {}
    for run, pid in plan_sweep(study.spec, store):
        config, task = run.config, get_task(run.config.task)
        prompt = torch.zeros(4, 64)
        stopped = task.name == "mnli" and config.seed == 1  # early, at step 200 of 300
        store.prompts.put(prompt, manifest(pid, prompt, task=task.name, task_type=task.type,
                                           seed=config.seed, score=OWN[config.seed],
                                           steps=200 if stopped else 300,
                                           config={"task": task.name, "steps": 300}))
        sources[(task.name, config.seed)] = pid
    return store, sources


def _matrix(store: Store, sources: dict[tuple[str, int], str], normalized,
            unlearned: str | None = "mnli") -> list[MatrixRow]:
    """A matrix whose chance-normalised transfer from ``task`` at ``seed`` to ``target`` is
    ``normalized(task, target, seed)`` against that seed's own prompt (score = 50 + value x
    (own - 50) / 100). The ``unlearned`` task's own prompts score the majority rate: not
    clearly above it."""
    rows = []
    for target in TASKS:
        for (task, seed), pid in sources.items():
            own = task == target
            lazy = own and target == unlearned
            value = 100.0 if own else normalized(task, target, seed)
            rows.append(dict(
                model=MODEL, source_task=task, source_type=get_task(task).type,
                source_prompt=pid, source_seed=seed, target_task=target,
                target_type=get_task(target).type, metric="accuracy",
                score=CHANCE if lazy else CHANCE + value * (OWN[seed] - CHANCE) / 100,
                chance=CHANCE, random_score=48.0, eval_examples=200,
                above_chance_low=(-1.5 if lazy else 20.0) if own else None,
                above_random_low=(1.0 if lazy else 25.0) if own else None,
                clearly_above=(not lazy) if own else None))
    matrix = [MatrixRow(**r) for r in seed_paired(rows)]
    write_records(store.layout.matrix(MODEL), MatrixRow, matrix)
    return matrix


def _report(study, projectors=()):
    path = write_report(study, list(projectors))
    text = path.read_text()
    estimates = {r["quantity"]: r for r in pq.read_table(path.parent / "estimates.parquet")
                 .to_pylist()}
    return text.split("## Findings")[1].split("## Prompt tuning")[0], text, estimates


def _same_vs_cross(findings: str) -> str:
    return next(line for line in findings.splitlines() if "same-type vs cross-type" in line)


def test_a_difference_resting_on_cross_type_transfer_below_chance_is_not_skill(tmp_path):
    """The quickstart's case: same-type prompts at the majority class, a cross-type cell far
    below it (a constant minority-class prediction)."""
    study = _study(tmp_path)
    store, sources = _prompts(study)

    def normalized(task, target, seed):
        if get_task(task).type == get_task(target).type:
            return 3.0 if seed else -2.0  # at the majority class
        return -110.0 if (task, target) == ("qnli", "sst2") else -5.0 + seed

    _matrix(store, sources, normalized)
    findings, _, estimates = _report(study)
    line = _same_vs_cross(findings)
    difference = estimates["same-type - cross-type chance-normalised transfer"]
    assert difference["low"] > 0 and difference["n"] == 2  # the difference itself is clear
    assert "This is not a difference in skill" in line
    assert "same-type transfer is not distinguishable from the majority class" in line
    assert "qnli->sst2 (-110.0 %)" in line
    assert "carry more of the target's skill" not in line
    assert "Same-type transfer is higher" not in line  # nor from the relative view


def test_same_type_transfer_above_chance_and_higher_is_a_skill_finding(tmp_path):
    study = _study(tmp_path)
    store, sources = _prompts(study)

    def normalized(task, target, seed):
        same = get_task(task).type == get_task(target).type
        return (60.0 + 4 * seed) if same else (5.0 + 2 * seed)

    _matrix(store, sources, normalized)
    line = _same_vs_cross(_report(study)[0])
    assert "Same-type prompts carry more of the target's skill than cross-type ones" in line
    assert "paired t over seeds, n = 2" in line


def test_a_cell_spread_over_two_seeds_enters_the_interval(tmp_path):
    """Each seed's same-type transfer is the mean of its cells, each against that seed's own
    prompt; the interval is the t-interval over the two seeds' means."""
    study = _study(tmp_path)
    store, sources = _prompts(study)
    values = {("sst2", "imdb"): {0: 10.0, 1: 70.0}, ("imdb", "sst2"): {0: 30.0, 1: 50.0}}

    def normalized(task, target, seed):
        return values.get((task, target), {0: 0.0, 1: 0.0})[seed]

    _matrix(store, sources, normalized)
    _, text, estimates = _report(study)
    same = estimates["same-type chance-normalised transfer"]
    per_seed = [20.0, 60.0]  # seed 0: (10 + 30) / 2, seed 1: (70 + 50) / 2
    half = t_quantile(1) * math.sqrt(2 * 20.0 ** 2) / math.sqrt(2)
    assert same["estimate"] == pytest.approx(40.0) and same["n"] == 2
    assert (same["low"], same["high"]) == pytest.approx((40.0 - half, 40.0 + half))
    assert same["method"] == "t over seeds" and same["replicates"] == "0: 20, 1: 60"
    assert per_seed == [float(v.split(": ")[1]) for v in same["replicates"].split(", ")]
    # The cell table shows each seed's value.
    assert "| sst2 | imdb | yes | " in text and "| 40.0 ± 42.4 (10.0, 70.0) | yes |" in text


def test_one_seed_is_too_few_to_compare(tmp_path):
    study = _study(tmp_path, seeds=(0,))
    store, sources = _prompts(study)
    _matrix(store, sources, lambda task, target, seed: 60.0 if get_task(task).type
            == get_task(target).type else 0.0)
    findings, _, estimates = _report(study)
    line = _same_vs_cross(findings)
    assert "too few to compare (n = 1 seed)" in line
    assert "carry more" not in line and "higher" not in line
    assert estimates["same-type relative transfer"]["low"] is None


def test_a_prompt_at_its_majority_rate_is_flagged_and_left_out(tmp_path):
    study = _study(tmp_path)
    store, sources = _prompts(study)
    _matrix(store, sources, lambda task, target, seed: 40.0)
    findings, text, _ = _report(study)
    assert ("⚠ tiny-roberta: the own prompts of mnli are not clearly above the majority class "
            "and a random prompt; no finding below counts their rows.") in findings
    assert "tiny-roberta: 6 of 12 task pairs left out (involving mnli)." in findings
    assert "cross-type: 4 pairs" in _same_vs_cross(findings)
    prompts = text.split("## Prompt tuning")[1].split("## Zero-shot")[0]
    mnli = next(line for line in prompts.splitlines() if line.startswith("| tiny-roberta | mnli"))
    assert ("| 80.0 ± 2.8 | 2 | seed 1 at 200 of 300 | 50.0 | 50.0 | 48.0 | ⚠ no (-1.5 / +1.0; "
            "200 rows) |") in mnli
    sst2 = next(line for line in prompts.splitlines() if line.startswith("| tiny-roberta | sst2"))
    assert "| 2 | - |" in sst2  # no run of sst2 stopped early


@pytest.mark.parametrize("unlearned", ["mnli", None])
def test_the_indicator_ranking_is_not_tested_with_too_few_tasks(tmp_path, unlearned):
    """Four tasks give each target three sources per seed, three give two: no interval over
    seeds covers such coefficients, so the ranking says so instead of ranking (with two, no
    per-target coefficient is formed at all)."""
    study = _study(tmp_path)
    store, sources = _prompts(study)
    _matrix(store, sources, lambda task, target, seed: {"sst2": 30.0, "imdb": 10.0}.get(task, 0.0)
            + seed, unlearned)
    rows = [IndicatorRow(model=MODEL, protocol="prompt", prompt_a=a, task_a=ta, prompt_b=b,
                         task_b=tb, indicator=name, value=value)
            for (ta, _), a in sources.items() for (tb, _), b in sources.items()
            for name, value in (("ON", {"sst2": 0.9, "imdb": 0.5}.get(ta, 0.1)),
                                ("E_avg", 0.3))]
    write_records(store.layout.indicators(MODEL), IndicatorRow, rows)
    write_records(store.layout.correlation(MODEL), CorrelationRow, [])
    findings, text, _ = _report(study)
    if unlearned:
        assert ("no target has 3 or more counted sources in a seed, so no per-target "
                "correlation is defined and the indicators are not ranked") in findings
        return
    line = next(f for f in findings.splitlines() if "strongest indicator" in f)
    assert "the strongest indicator is ON" in line and "ON ranks 1 of 1" in line
    assert "the ranking is not tested: too few to compare" in line
    table = text.split("## Transferability indicators")[1]
    assert "| ON | 1.00 [no interval] | 4 x 3+ |" in table


def _projected(pid, task, score, untrained, chance, gain, above, in_training=True):
    return ProjectorEvalRow(
        projector=pid, source_model="paraphrase-MiniLM-L3-v2", target_model=MODEL, mode="task",
        variant="mlp", task=task, task_type=get_task(task).type, in_training=in_training,
        type_in_training=True, source_prompt="s", target_prompt="t", metric="accuracy",
        score=score, untrained_score=untrained, own_score=66.8, relative=100 * score / 66.8,
        distance=0.1, untrained_distance=0.2, eval_examples=400, chance=chance,
        gain_low=gain[0], gain_high=gain[1], above_chance_low=above[0],
        above_chance_high=above[1])


def test_a_projected_prompt_counts_only_above_the_majority_class_too(tmp_path):
    """Beating an untrained projector that predicts a class below the majority is not skill;
    one projector run tells nothing of how projector training varies."""
    study = _study(tmp_path)
    store, sources = _prompts(study)
    _matrix(store, sources, lambda task, target, seed: 40.0)
    write_records(store.layout.projector_eval("p1"), ProjectorEvalRow, [
        _projected("p1", "sst2", 59.5, 19.0, 43.8, (36.0, 45.0), (11.0, 20.0)),
        _projected("p1", "imdb", 40.0, 19.0, 43.8, (17.0, 25.0), (-8.0, 0.5), False)])
    findings = _report(study, ["p1"])[0]
    training = next(f for f in findings.splitlines() if "on its training tasks" in f)
    held_out = next(f for f in findings.splitlines() if "held-out tasks of a training" in f)
    assert "it carries skill to the target model" in training
    assert "too few to compare (n = 1 projector run)" in training
    assert "not distinguishable from the majority class" in held_out
    assert "above the untrained projector" in held_out and "no skill carried" in held_out


def test_projector_runs_are_the_replicates_of_projector_training(tmp_path):
    study = _study(tmp_path)
    store, sources = _prompts(study)
    _matrix(store, sources, lambda task, target, seed: 40.0)
    for pid, score in (("p1", 59.5), ("p2", 61.5)):
        write_records(store.layout.projector_eval(pid), ProjectorEvalRow, [
            _projected(pid, "sst2", score, 19.0, 43.8, (36.0, 45.0), (11.0, 20.0))])
    findings, _, estimates = _report(study, ["p1", "p2"])
    training = next(f for f in findings.splitlines() if "on its training tasks" in f)
    assert "over 2 projector runs" in training and "t over projector runs, n = 2" in training
    gain = next(v for k, v in estimates.items() if "gain over the untrained" in k)
    assert gain["estimate"] == pytest.approx(41.5) and gain["low"] is not None


def _tpt_run(store, pid, scores, seed, task="imdb"):
    history = [{"step": 100 * k, "accuracy": s, "time_s": float(k)}
               for k, s in enumerate(scores)]
    prompt = torch.zeros(4, 64)
    m = manifest(pid, prompt, task=task, seed=seed, score=max(scores), history=history,
                 best_step=100 * scores.index(max(scores)), steps=300)
    store.prompts.put(prompt, m)
    return store.prompts.manifest(pid)


@pytest.mark.parametrize("seeds", [(0,), (0, 1)])
def test_tpt_comes_with_its_grid_its_seeds_and_the_area_under_its_curve(tmp_path, seeds):
    study = _study(tmp_path, seeds=seeds, tpt=True)
    store, sources = _prompts(study)
    _matrix(store, sources, lambda task, target, seed: 40.0)
    source = store.prompts.manifest(sources[("sst2", 0)])
    summary, curves = [], []
    for seed in seeds:
        vanilla = _tpt_run(store, f"v{seed}", [50, 55, 60, 65], seed)
        tpt = _tpt_run(store, f"t{seed}", [58, 66, 67 + seed, 70], seed)
        summary += speedup_rows(vanilla, [("tpt from sst2", source, tpt)])
        curves += [TptCurveRow(model=MODEL, target_task="imdb", run=label, source_task=None,
                               prompt_id=m.id, step=h["step"], score=h["accuracy"],
                               time_s=h["time_s"])
                   for label, m in (("vanilla", vanilla), ("tpt from sst2", tpt))
                   for h in m.history]
    folder = store.layout.tpt_dir("imdb", model=MODEL)
    write_records(folder / "summary.parquet", type(summary[0]), summary)
    write_records(folder / "curves.parquet", TptCurveRow, curves)
    findings, _, estimates = _report(study)
    line = next(f for f in findings.splitlines() if "tpt from sst2" in f)
    assert "evaluated every 100 of 300 steps" in line
    assert "reaches vanilla PT's best score in 3.00x fewer steps" in line
    assert "its best score" not in line
    # Areas: vanilla (52.5 + 57.5 + 62.5) / 3 = 57.5; TPT (62 + 66.5 + 68.5) / 3 = 65.67 at
    # seed 0, and 66.33 at seed 1 (one point higher at step 200).
    area = estimates["imdb, tpt from sst2: area minus vanilla's"]
    if seeds == (0,):
        assert "too few to compare (n = 1 seed)" in line and area["low"] is None
        assert area["estimate"] == pytest.approx(65.0 + 2 / 3 - 57.5)
    else:
        assert area["estimate"] == pytest.approx((65.0 + 2 / 3 + 66.0) / 2 - 57.5)
        assert area["n"] == 2
        assert area["low"] is not None and "paired t over seeds, n = 2, p = " in line
