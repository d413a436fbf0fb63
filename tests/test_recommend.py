"""`ptdist recommend` on a store with a planted best source: a task "newtask" whose label is
set by a keyword (football -> sport, guitar -> music) and three source tasks of tiny-roberta
prompts: "twin" (the same keywords, labels and label words: its prompt transfers), "inverse"
(the same words, the labels swapped: below chance on newtask) and "other" (other keywords and
label words: at chance). The rule by hand, the indicator choice, --then-tpt end to end, and
the leave-one-task-out benchmark on a small study store."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from ptdist.recommend.ranking import ZeroShot, pick_indicator, rank_candidates
from ptdist.statistics import MIN_ROWS
from ptdist.store import Store
from ptdist.store.results import CorrelationRow, RecommendRow, TptSummaryRow
from ptdist.store.tables import read_records
from ptdist.tasks import get_task
from tests.conftest import TOPIC_YAML, child_env, keyword_rows, prompts_copy, write_jsonl
from tests.test_cli import run

REPO = Path(__file__).resolve().parents[1]
TASKS = {"newtask": (("football", "guitar"), ("sport", "music"), 3),
         "twin": (("football", "guitar"), ("sport", "music"), 5),
         "inverse": (("guitar", "football"), ("sport", "music"), 7),
         "other": (("tennis", "piano"), ("game", "song"), 9)}
RUN = {"steps": 60, "eval_every": 20, "prompt_length": 8, "batch_size": 16, "lr": 0.1}


def planted_data(root: Path) -> Path:
    data = root / "data"
    for name, (words, (first, second), seed) in TASKS.items():
        write_jsonl(data / name / "train.jsonl", keyword_rows(256, seed, words, "text"))
        write_jsonl(data / name / "eval.jsonl", keyword_rows(96, seed + 1, words, "text"))
        (data / f"{name}.yaml").write_text(TOPIC_YAML.format(name=name, first=first,
                                                             second=second))
    return data


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(root, {source task: its prompt id}): one tiny-roberta prompt of each source task in
    root/store; newtask has none."""
    from ptdist.training import TrainConfig, train

    root = tmp_path_factory.mktemp("planted")
    data = planted_data(root)
    store = Store(root / "store")
    ids = {name: train(TrainConfig(model="tiny-roberta", task=str(data / f"{name}.yaml"),
                                   eval_limit=None, data_dir=str(data), **RUN), store).prompt_id
           for name in ("twin", "inverse", "other")}
    return root, ids


def recommend(capsys, root: Path, *extra: str) -> dict:
    code, out, err = run(capsys, "recommend", "--model", "tiny-roberta", "--task",
                         str(root / "data" / "newtask.yaml"), "--store", str(root / "store"),
                         "--data-dir", str(root / "data"), "--json", *extra)
    assert code == 0, err[-3000:]
    return json.loads(out.splitlines()[-1])


def test_the_planted_best_source_comes_first(capsys, planted, tmp_path):
    from ptdist.store.peft_export import export_peft

    root, ids = planted
    store = Store(root / "store")
    export_peft(store.prompts, ids["twin"], tmp_path / "hub" / "copy")
    result = recommend(capsys, root, "--hub", f"twin={tmp_path / 'hub' / 'copy'}", "--probe",
                       "10")
    ranking = {r["label"]: r for r in result["ranking"]}
    first, second, *_, last = result["ranking"]
    # The store's twin prompt and its copy as a PEFT adapter: the same scores, first and second.
    assert {first["label"], second["label"]} == {ids["twin"], "copy"}
    assert first["score"] == second["score"] > 90 and first["clearly_above"]
    assert first["rank"] == 1 and first["rank_low"] == first["rank_high"] == 1
    assert ranking["copy"]["origin"] == "hub" and ranking["copy"]["source_type"] == "topic"
    assert last["label"] == ids["inverse"] and last["score"] < result["chance"] == 50.0
    assert not ranking[ids["other"]]["clearly_above"]

    # Its shape: the settings, the baselines, the probe and its indicator, every row's fields.
    assert {k: result[k] for k in ("model", "task", "metric", "sample_rows")} == \
        {"model": "tiny-roberta", "task": "newtask", "metric": "accuracy", "sample_rows": 256}
    assert result["indicator"]["name"] == "ON" and result["indicator"]["weight"] == 0.0
    assert all(set(r) == {f.name for f in fields(RecommendRow)} for r in result["ranking"])
    assert all(r["indicator"] == "ON" and 0 <= r["indicator_value"] <= 1
               for r in result["ranking"])
    # The probe: a seed no candidate has, in a store of its own (never a candidate itself).
    assert not store.prompts.has(result["probe"])
    probe = Store(store.layout.probes()).prompts.manifest(result["probe"])
    assert (probe.task, probe.seed, probe.steps) == ("newtask", 1, 10)
    stored = read_records(result["table"], RecommendRow)
    assert [r.label for r in stored] == [r["label"] for r in result["ranking"]]
    assert Path(result["figure"]).stat().st_size > 0


def test_prompts_of_another_model_are_candidates_through_a_projector(capsys, planted,
                                                                      tmp_path):
    """tiny-t5-d96's twin and other prompts, projected to tiny-roberta by a distance projector
    trained on those two tasks, are ranked beside tiny-roberta's own; a projector trained on
    the new task is left out (it has seen that task's prompts)."""
    import shutil

    from ptdist.projection.config import ProjectorConfig
    from ptdist.projection.modes import train_projector
    from ptdist.training import TrainConfig, train

    root, ids = planted
    shutil.copytree(root / "data", tmp_path / "data")
    shutil.copytree(root / "store", tmp_path / "store")
    store, data = Store(tmp_path / "store"), tmp_path / "data"
    tasks = ("twin", "other")
    sources = [train(TrainConfig(model="tiny-t5-d96", task=str(data / f"{t}.yaml"),
                                 eval_limit=None, data_dir=str(data), **RUN), store).prompt_id
               for t in tasks]
    projector = train_projector(ProjectorConfig(
        source_model="tiny-t5-d96", target_model="tiny-roberta", mode="distance",
        tasks=tuple(str(data / f"{t}.yaml") for t in tasks), source_prompts=tuple(sources),
        target_prompts=tuple(ids[t] for t in tasks), hidden=16, steps=20, eval_every=10),
        store)
    result = recommend(capsys, tmp_path)
    projected = {r["label"]: r for r in result["ranking"] if r["origin"] != "store"}
    # Labelled by the source model, the task and the projector (a store may hold several).
    assert set(projected) == {f"tiny-t5-d96:{t}@{projector.id[:8]}" for t in tasks}
    for task in tasks:
        row = projected[f"tiny-t5-d96:{task}@{projector.id[:8]}"]
        assert row["origin"] == f"projected (from tiny-t5-d96, projector {projector.id})"
        assert row["candidate"] == str(store.layout.projected_prompt(projector.id, task))
        assert (row["source_task"], row["source_type"]) == (task, "topic")

    from ptdist.recommend.candidates import projected_candidates

    assert projected_candidates(store, "tiny-roberta", "twin") == []  # it trained on twin


@pytest.mark.parametrize("extra, needle", [
    (("--then-tpt", "0"), "then_tpt 0 (--then-tpt): give how many"),
    (("--then-tpt", "1", "--steps", "0"), "steps must be at least 1"),
    (("--then-tpt", "1", "--ds-config", "zero9"), "zero9"),
    (("--sample", "0"), "(--sample, --probe) take a positive number"),
    (("--hub", "absent/"), "absent is neither a prompt file"),
    (("--model", "tiny-t5"), "no candidate source prompts for 'newtask' on 'tiny-t5'"),
], ids=["then-tpt 0", "steps 0", "ds-config", "sample 0", "hub", "no candidates"])
def test_bad_input_stops_before_any_model_loads(capsys, planted, extra, needle):
    root, _ = planted
    code, out, err = run(capsys, "recommend", "--model", "tiny-roberta", "--task",
                         str(root / "data" / "newtask.yaml"), "--store", str(root / "store"),
                         "--data-dir", str(root / "data"), *extra)
    assert code == 2 and needle in err and err.count("\n") == 1, err
    assert "loaded" not in err


def zero_shot(scores: list[float], replicates: list[list[float]],
              above_random: list[float] | None = None, rows: int = MIN_ROWS) -> ZeroShot:
    k = len(scores)
    return ZeroShot(get_task("sst2"), "accuracy", rows, np.array(scores), np.array(replicates),
                    50.0, [50.0] * k, [1.0] * k, above_random or [1.0] * k)


def test_the_rule_combines_the_signals_as_documented():
    # Zero-shot ranks a=1, b=2.5, c=2.5 (tied); the indicator ranks c=1, b=2, a=3.
    zero = zero_shot([80.0, 60.0, 60.0], [[80.0, 60.0, 60.0], [50.0, 70.0, 60.0]])
    indicator = np.array([0.1, 0.5, 0.9])
    ranked = rank_candidates(zero, indicator, 0.5, ["a", "b", "c"])
    # (zero-shot rank + 0.5 x indicator rank) / 1.5
    assert ranked.combined == pytest.approx([(1 + 1.5) / 1.5, (2.5 + 1) / 1.5,
                                             (2.5 + 0.5) / 1.5])
    assert list(ranked.rank) == [1, 3, 2]
    # The second resample puts b first on zero-shot: b (1 + 1) beats c (2 + 0.5), a (3 + 1.5).
    assert list(ranked.p_top) == [0.5, 0.5, 0.0]
    assert list(ranked.low) == [1, 1, 2] and list(ranked.high) == [3, 3, 2]
    # Without an indicator, ties break by name.
    assert list(rank_candidates(zero, None, 0.0, ["a", "c", "b"]).rank) == [1, 3, 2]
    # A candidate not clearly above its baselines goes behind those that are, whatever its
    # indicator says: c falls from 2 to 3, and last on resample 2 too, where its combined
    # score (1.67) beats a's (3).
    behind = zero_shot([80.0, 60.0, 60.0], [[80.0, 60.0, 60.0], [50.0, 70.0, 60.0]],
                       above_random=[1.0, 1.0, -1.0])
    ranked = rank_candidates(behind, indicator, 0.5, ["a", "b", "c"])
    assert list(ranked.rank) == [1, 2, 3] and list(ranked.p_top) == [0.5, 0.5, 0.0]
    # Below MIN_ROWS rows the row bootstrap gives no interval: the rank stands alone.
    few = rank_candidates(zero_shot([80.0, 60.0, 60.0], [[80.0, 60.0, 60.0]] * 2,
                                    rows=MIN_ROWS - 1), indicator, 0.5, ["a", "b", "c"])
    assert list(few.rank) == [1, 3, 2] and few.low is few.high is few.p_top is None


def correlation(indicator: str, per_target: float | None, overall: float) -> CorrelationRow:
    return CorrelationRow("m", indicator, per_target, None, None, 2 if per_target else 0,
                          overall, None, None, 12, "")


def test_the_indicator_is_the_best_one_the_study_ranks_that_can_be_computed():
    rows = [correlation("E_concat", 0.3, 0.2), correlation("ON", 0.6, 0.5),
            correlation("ON_layer_1", None, 0.9)]
    chosen = pick_indicator(rows, "m", capturable=True)
    assert (chosen.name, chosen.weight) == ("ON", 0.6)
    assert "Spearman with zero-shot transfer 0.60 per target (2 targets)" in chosen.why
    chosen = pick_indicator(rows, "m", capturable=False)  # no activations: embedding only
    assert (chosen.name, chosen.weight) == ("E_concat", 0.3)
    assert pick_indicator([correlation("E_avg", -0.4, -0.1)], "m", True).weight == 0.0
    assert (pick_indicator([], "m", True).name, pick_indicator([], "m", False).name) == \
        ("ON", "E_avg")


def test_then_tpt_trains_from_the_top_source_and_from_random_per_seed(capsys, planted,
                                                                      tmp_path):
    import shutil

    root, ids = planted
    shutil.copytree(root / "data", tmp_path / "data")
    prompts_copy(root / "store", tmp_path / "store")  # its runs go into the copy
    root = tmp_path
    result = recommend(capsys, root, "--then-tpt", "1", "--seeds", "0", "1", "--steps", "10",
                       "--eval-every", "5", "--local")
    vanilla, tpt = result["tpt"]["runs"]
    assert vanilla["run"] == "vanilla" and tpt["run"] == f"tpt from {ids['twin']}"
    assert tpt["rank"] == 1 and tpt["best"]["n"] == 2 and tpt["start"]["n"] == 2
    assert tpt["start"]["estimate"] > 90 > vanilla["start"]["estimate"]  # it starts at twin's
    # Each over the seeds, the seed the unit: a t-interval of the mean, a paired t-test of the
    # difference from each seed's vanilla run.
    assert tpt["best"]["method"] == "t over seeds" and tpt["best"]["low"] is not None
    assert tpt["area_gain"]["method"] == "paired t over seeds" and tpt["area_gain"]["n"] == 2
    assert tpt["area_gain"]["estimate"] > 0 and tpt["area_gain"]["p"] is not None
    assert tpt["speedups"] == {"0": float("inf"), "1": float("inf")}  # vanilla's best at step 0
    assert tpt["grid"] == "every 5 of 10 steps"
    folder = Path(result["tpt"]["folder"])
    summary = read_records(folder / "summary.parquet", TptSummaryRow)
    assert [r.run for r in summary] == ["vanilla", tpt["run"]] * 2
    store = Store(root / "store")
    runs = [store.prompts.manifest(r.prompt_id) for r in summary]
    assert [(m.seed, m.init) for m in runs] == [(0, "random"), (0, f"prompt:{ids['twin']}"),
                                                (1, "random"), (1, f"prompt:{ids['twin']}")]
    assert (folder / "curves.png").exists()


STUDY = """name: planted
storage_path: {root}/store
data_dir: {data}
tasks: [{data}/newtask.yaml, {data}/twin.yaml, {data}/inverse.yaml, {data}/other.yaml]
seeds: [0]
train: {{steps: 60, eval_every: 20, prompt_length: 8, batch_size: 16, lr: 0.1, eval_limit: 96}}
models:
  tiny-roberta: {{}}
stages:
  transfer: {{eval_limit: 96}}
  tpt: {{targets: [{data}/newtask.yaml], sources: [{data}/twin.yaml, {data}/inverse.yaml]}}
"""


@pytest.mark.slow
def test_the_benchmark_checks_each_task_left_out_of_a_study(tmp_path):
    data = planted_data(tmp_path)
    (tmp_path / "study.yaml").write_text(STUDY.format(root=tmp_path, data=data))
    proc = subprocess.run([sys.executable, "-m", "ptdist", "replicate", "--study",
                           str(tmp_path / "study.yaml"), "--local"], cwd=tmp_path,
                          env=child_env(), text=True, capture_output=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "recommend.py"), "--store",
                           str(tmp_path / "store"), "--json", str(tmp_path / "check.json")],
                          cwd=tmp_path, env=child_env(), text=True, capture_output=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "check.json").read_text())
    folds = {f["target"]: f for f in result["folds"]}
    assert set(folds) == set(TASKS)
    assert folds["newtask"]["predicted"][0] == folds["newtask"]["best"] == "twin"
    assert set(folds["newtask"]["tpt"]) == {"twin", "inverse"}
    # By its best score TPT from inverse may catch up within the study's 60 steps (a tie
    # counts as a TPT hit); where they start is planted: twin's prompt solves newtask,
    # inverse's gets every row wrong.
    assert folds["newtask"]["tpt"]["twin"] >= folds["newtask"]["tpt"]["inverse"]
    tpt = read_records(Store(tmp_path / "store").layout.tpt_dir("newtask", model="tiny-roberta")
                       / "summary.parquet", TptSummaryRow)
    start = {r.source_task: r.start_score for r in tpt}
    assert start["twin"] > 90 and start["inverse"] < 10
    measures = {m["measure"]: m for m in result["summary"]}
    assert set(measures["regret (best - chosen, score points)"]["baselines"]) == \
        {"a random source", "the same task type", "no transfer"}
    # One seed is one replicate: every measure a mean without an interval, every comparison
    # "too few to compare (n = 1 seed)".
    assert measures["TPT top-1 (best TPT score)"]["recommended"]["n"] == 1
    assert all(m["recommended"]["low"] is None for m in measures.values())
    assert all("too few to compare (n = 1 seed)" in words
               for m in measures.values() for words in m["comparisons"].values())
    assert "| top-1 hit rate | 1 | 4 |" in proc.stdout
