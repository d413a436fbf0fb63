"""Cross-task transfer on tiny presets: the zero-shot matrix (batched = pair by pair) and
TPT_task's speed-up, with learnable tasks of two types."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ptdist.errors import PtdistError
from ptdist.store import Store
from ptdist.store.manifests import PromptManifest
from ptdist.store.prompts import by_task
from ptdist.store.results import MatrixRow
from ptdist.store.tables import read_records
from ptdist.training.evaluation import score_prompt
from ptdist.transfer import MatrixSettings, speedup_rows, transfer_matrix
from tests.conftest import child_env

REPO = Path(__file__).resolve().parents[1]


def test_the_matrix_has_every_pair_and_a_100_percent_diagonal(task_prompts):
    root, data, ids = task_prompts
    store = Store(root / "store")
    prompts = store.prompts.select("tiny-roberta", ["topic", "sst2", "imdb"])
    result = transfer_matrix(store, prompts, MatrixSettings(data_dir=str(data)))
    assert result.tasks == ["imdb", "sst2", "topic"]  # grouped by type: sentiment, then topic
    assert len(result.rows) == 3 ** 2
    for row in result.rows:
        if row.source_task == row.target_task:
            assert row.relative == pytest.approx(100.0)
            assert row.score == row.own_score >= 80.0  # the tasks are learnable
        assert row.source_prompt == ids[row.source_task]
        assert row.eval_examples == 96
    assert read_records(result.table, MatrixRow) == result.rows
    assert result.table == store.layout.matrix("tiny-roberta")


def test_batched_evaluation_equals_one_pair_at_a_time(task_prompts):
    root, data, ids = task_prompts
    store = Store(root / "store")
    result = transfer_matrix(store, store.prompts.select("tiny-roberta", ids),
                             MatrixSettings(data_dir=str(data), batch_size=8))
    targets = {"sst2": "sst2", "imdb": "imdb", "topic": str(data / "topic.yaml"),
               "topic2": str(data / "topic2.yaml")}
    for row in result.rows:
        alone = score_prompt("tiny-roberta", store, row.source_prompt,
                             targets[row.target_task], data_dir=str(data), batch_size=5)
        assert alone["accuracy"] == row.score, row


def test_tasks_without_prompts_are_named(task_prompts):
    root, data, _ = task_prompts
    store = Store(root / "store")
    names = ["sst2", "movie_rationales", "snli"]
    with pytest.raises(PtdistError) as err:
        by_task(store.prompts.select("tiny-roberta", names), names, "of model 'tiny-roberta'")
    assert "no prompt of model 'tiny-roberta' for task(s): movie_rationales, snli" in \
        str(err.value)
    with pytest.raises(PtdistError, match="at least two different tasks; got sst2"):
        transfer_matrix(store, store.prompts.select("tiny-roberta", ["sst2"]), MatrixSettings())


def _manifest(pid: str, scores: list[float]) -> PromptManifest:
    history = [{"step": 10 * (i + 1), "accuracy": s, "time_s": 2.0 * (i + 1)}
               for i, s in enumerate(scores)]
    best = max(history, key=lambda h: h["accuracy"])
    return PromptManifest(
        id=pid, model="m", task="t", task_type="sentiment", seed=0, init="random",
        metric="accuracy", score=best["accuracy"], metrics={}, steps=history[-1]["step"],
        best_step=best["step"], shape=[1, 1], backbone_kind="mlm", precision="fp32",
        config={}, history=history, world_size=1, zero_stage=0, resumed_from=None,
        wall_time_s=0.0, created=0.0, ptdist_version="test")


def test_speedup_is_read_off_the_curves():
    vanilla = _manifest("v", [50, 70, 80, 75])  # best 80, first reached at step 30
    fast = _manifest("a", [78, 81, 79])  # reaches 80 at step 20
    never = _manifest("b", [60, 65])
    source = _manifest("s", [90])
    rows = speedup_rows(vanilla, [("tpt a", source, fast), ("tpt b", source, never)])
    assert [r.speedup for r in rows] == [1.0, 1.5, None]
    assert [r.steps_to_vanilla_best for r in rows] == [30, 20, None]
    assert rows[1].time_to_vanilla_best_s == 4.0 and rows[1].vanilla_best == 80


@pytest.mark.slow
def test_tpt_from_a_same_task_prompt_reaches_vanilla_in_fewer_steps(task_prompts, tmp_path):
    root, data, ids = task_prompts
    env = child_env()
    store = root / "store"
    # The source is the sst2 prompt trained with seed 0; vanilla and TPT runs use seed 1.
    proc = subprocess.run(
        [sys.executable, "-m", "ptdist", "transfer", "tpt", "--model", "tiny-roberta",
         "--targets", "sst2", "--sources", "sst2", "--seed", "1", "--steps", "120",
         "--eval-every", "10", "--batch-size", "16", "--lr", "0.1", "--eval-limit", "0",
         "--store", str(store), "--data-dir", str(data), "--json"],
        cwd=tmp_path, env=env, text=True, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    vanilla, tpt = out["summary"]
    assert vanilla["run"] == "vanilla" and vanilla["speedup"] == 1.0
    assert tpt["source_prompt"] == ids["sst2"]
    assert tpt["steps_to_vanilla_best"] < vanilla["steps_to_vanilla_best"]
    assert tpt["speedup"] == vanilla["steps_to_vanilla_best"] / tpt["steps_to_vanilla_best"] > 1
    folder = Path(out["folders"][0])
    curves = pq.read_table(folder / "curves.parquet").to_pylist()
    first = {run: next(c["step"] for c in curves if c["run"] == run
                       and c["score"] >= vanilla["vanilla_best"])
             for run in ("vanilla", tpt["run"])}
    assert tpt["speedup"] == first["vanilla"] / first[tpt["run"]]
    assert (folder / "curves.png").stat().st_size > 0
    assert "speed-up" in proc.stdout
    # Seed 1 has no stored vanilla run: the command says why it trains one.
    assert "training a vanilla run of tiny-roberta on sst2 (seed 1): the store holds no " \
           "vanilla run of it with this seed" in proc.stderr


@pytest.mark.slow
def test_the_matrix_command_runs_a_job_per_target_on_ray(task_prompts, tmp_path):
    root, data, _ = task_prompts
    env = child_env()
    proc = subprocess.run(
        [sys.executable, "-m", "ptdist", "transfer", "matrix", "--model", "tiny-roberta",
         "--tasks", "sst2", "imdb", "--store", str(root / "store"), "--data-dir", str(data),
         "--json"], cwd=tmp_path, env=env, text=True, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "start matrix tiny-roberta [2/2]" in proc.stderr and "local Ray" in proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["rows"]) == 4 and Path(out["heatmap"]).exists()
    assert "relative performance (%)" in proc.stdout


def test_tpt_says_why_it_trains_its_own_vanilla_run(task_prompts):
    from ptdist.orchestration.stages import why_vanilla_is_trained
    from ptdist.training import TrainConfig

    root, data, ids = task_prompts
    store = Store(root / "store")
    # task_prompts trained sst2 with seed 0, 80 steps, eval_every 20, lr 0.1, eval_limit None
    ours = TrainConfig(model="tiny-roberta", task="sst2", steps=40, eval_every=20,
                       prompt_length=8, batch_size=16, lr=0.1, eval_limit=None)
    assert why_vanilla_is_trained(store, ours, "sst2") == (
        f"training a vanilla run of tiny-roberta on sst2 (seed 0): stored run {ids['sst2']} "
        "differs in steps (40 here, 80 stored)")
    other_seed = TrainConfig(**{**ours.to_dict(), "seed": 3})
    assert why_vanilla_is_trained(store, other_seed, "sst2").endswith(
        "the store holds no vanilla run of it with this seed")
