"""Cross-task transfer on tiny presets: the zero-shot matrix (batched = pair by pair) and
TPT_task's speed-up, with learnable tasks of two types."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ptdist.api.prompts import evaluate
from ptdist.errors import PtdistError
from ptdist.scoring import EvalSettings
from ptdist.store import Store
from ptdist.store.manifests import PromptManifest
from ptdist.store.prompts import by_task
from ptdist.store.results import MatrixRow, TptSummaryRow
from ptdist.store.tables import read_records, write_records
from ptdist.transfer import MatrixSettings, speedup_rows, transfer_matrix
from ptdist.transfer.matrix import own_prompts, unusable_tasks
from tests.conftest import attempts, child_env, fault_rule, prompts_copy

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
        alone = evaluate("tiny-roberta", row.source_prompt, targets[row.target_task],
                         store=store, settings=EvalSettings(data_dir=str(data), batch_size=5))
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


def _manifest(pid: str, scores: list[float], task: str = "t", seed: int = 0,
              start: int = 1, config: dict | None = None) -> PromptManifest:
    """A prompt with a learning curve: one evaluation every 10 steps from step 10 x start."""
    history = [{"step": 10 * (i + start), "accuracy": s, "time_s": 2.0 * (i + start)}
               for i, s in enumerate(scores)]
    best = max(history, key=lambda h: h["accuracy"])
    return PromptManifest(
        id=pid, model="m", task=task, task_type="sentiment", seed=seed, init="random",
        metric="accuracy", score=best["accuracy"], metrics={}, steps=history[-1]["step"],
        best_step=best["step"], shape=[1, 1], backbone_kind="mlm", precision="fp32",
        config=config or {}, history=history, world_size=1, zero_stage=0, resumed_from=None,
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


def test_a_tpt_comparison_records_its_one_schedule(tmp_path):
    """Vanilla and TPT run under one schedule, which every summary row names; runs stored
    before the schedule was a setting decayed linearly. Runs under two schedules are not
    compared, and a summary table written before the column existed reads as linear."""
    constant = {"schedule": "constant"}
    vanilla, tpt = (_manifest(p, [50, 80], config=constant) for p in ("v", "a"))
    source = _manifest("s", [90])
    rows = speedup_rows(vanilla, [("tpt a", source, tpt)])
    assert [r.schedule for r in rows] == ["constant", "constant"]
    old = speedup_rows(_manifest("v", [50, 80]), [("tpt a", source, _manifest("a", [60]))])
    assert {r.schedule for r in old} == {"linear"}
    with pytest.raises(PtdistError, match="under one learning-rate schedule; the runs on t "
                                          "used constant, linear"):
        speedup_rows(vanilla, [("tpt a", source, _manifest("a", [60]))])
    path = write_records(tmp_path / "summary.parquet", TptSummaryRow, rows)
    table = pq.read_table(path)
    meta = {**table.schema.metadata, b"ptdist.schema_version": b"2"}
    pq.write_table(table.drop_columns(["schedule"]).replace_schema_metadata(meta), path)
    assert [r.schedule for r in read_records(path, TptSummaryRow)] == ["linear", "linear"]


def test_speedup_with_a_tolerance_on_a_hand_made_curve_evaluated_from_step_0():
    # Vanilla: 50 at step 0, reaches its best (90) only at step 50 and 89.2 (>= 0.99 x 90 =
    # 89.1) at step 20. TPT starts at 85 and reaches 89.5 at step 10, never 90.
    vanilla = _manifest("v", [50, 70, 89.2, 88, 89, 90], start=0)
    tpt = _manifest("a", [85, 89.5, 88, 89], start=0)
    started = _manifest("b", [89.3, 85], start=0)  # at the threshold before any update
    source = _manifest("s", [90])
    rows = speedup_rows(vanilla, [("tpt a", source, tpt), ("tpt b", source, started)],
                        tolerance=0.99)
    assert [r.start_score for r in rows] == [50, 85, 89.3]
    assert [r.steps_to_vanilla_best for r in rows] == [50, None, None]
    assert [r.speedup for r in rows] == [1.0, None, None]  # TPT never reaches 90 itself
    assert [r.steps_to_tolerance for r in rows] == [20, 10, 0]
    assert [r.speedup_tolerance for r in rows] == [1.0, 2.0, float("inf")]
    assert {r.tolerance for r in rows} == {0.99}


def _scored(references: list[int], predictions: list[list[int]]):
    from ptdist.tasks import compute_metrics, get_task
    from ptdist.scoring import Scored

    task = get_task("sst2")
    return Scored(task, references, predictions,
                  [compute_metrics(task, p, references) for p in predictions])


def test_chance_normalised_transfer_equals_a_hand_computed_value():
    from ptdist.transfer.matrix import column_rows

    # 40 rows, 24 negative: the majority class scores 60 %.
    refs = ([0] * 12 + [1] * 8) * 2
    own = list(refs)  # 100 %
    source = ([0] * 12 + [1] * 4 + [0] * 4) * 2  # 32 of 40: 80 %
    random_start = [1] * 40  # the random prompt of seed 0: 40 %
    sources = [_manifest("own", [100], task="sst2"), _manifest("src", [80], task="imdb")]
    rows = {r.source_prompt: r for r in column_rows(
        sources, "sst2", [0], _scored(refs, [own, source, random_start]))}
    cell = rows["src"]
    assert cell.score == 80 and cell.chance == 60 and cell.own_score == 100
    assert cell.relative == pytest.approx(80.0)  # 80 / 100
    # 100 x (80 - 60) / (100 - 60): the source recovers half of the own prompt's gain
    assert cell.normalized == pytest.approx(50.0)
    assert cell.random_score == 40 and cell.clearly_above is None  # not an own prompt
    assert rows["own"].normalized == pytest.approx(100.0)
    assert rows["own"].clearly_above is True and rows["own"].above_chance_low > 0


def test_an_own_prompt_at_its_majority_rate_is_flagged():
    from ptdist.transfer.matrix import column_rows

    refs = ([0] * 12 + [1] * 8) * 2  # majority class: 60 %
    sources = [_manifest("own", [100], task="sst2"), _manifest("lazy", [60], task="sst2", seed=1),
               _manifest("src", [80], task="imdb"), _manifest("src1", [80], task="imdb", seed=1)]
    source = ([0] * 12 + [1] * 4 + [0] * 4) * 2  # 80 %
    # own (100), lazy (60), src and src1 (80), the random prompts of seeds 0 and 1
    predictions = [list(refs), [0] * 40, source, source, [1] * 40, [0] * 40]
    rows = {r.source_prompt: r for r in column_rows(sources, "sst2", [0, 1],
                                                    _scored(refs, predictions))}
    # Its difference to the majority class is 0 on every resample of the rows.
    lazy = rows["lazy"]
    assert lazy.above_chance_low == 0 and lazy.clearly_above is False
    assert rows["own"].clearly_above is True
    # Each source is compared with the target's own prompt of its seed.
    assert rows["src"].own_score == 100 and rows["src"].relative == pytest.approx(80.0)
    assert rows["src1"].own_score == 60 and rows["src1"].relative == pytest.approx(400 / 3)
    assert rows["src"].random_score == 50  # the mean of the two random prompts
    # An own prompt without a clear gain over chance leaves the normalisation undefined.
    assert all(r.normalized is None for r in rows.values())
    assert unusable_tasks(rows.values()) == ["sst2"]


def test_with_too_few_evaluation_rows_no_prompt_is_clearly_above():
    from ptdist.transfer.matrix import column_rows

    refs = [0] * 12 + [1] * 8  # 20 rows: a row bootstrap's interval would not cover
    sources = [_manifest("own", [100], task="sst2"), _manifest("src", [80], task="imdb")]
    rows = {r.source_prompt: r for r in column_rows(
        sources, "sst2", [0], _scored(refs, [list(refs), [0] * 20, [1] * 20]))}
    own = rows["own"]
    assert own.clearly_above is False and own.above_chance_low is None
    assert own.above_random_low is None and rows["src"].normalized is None


def test_a_matrix_table_of_schema_2_is_read_against_the_own_prompt_of_each_seed(tmp_path):
    from dataclasses import asdict, fields

    import pyarrow as pa
    import pyarrow.parquet as pq

    from ptdist.store.results import MatrixRow
    from ptdist.store.tables import read_records

    def row(source, task, seed, score):  # as schema 2 wrote it: against the mean own score
        return MatrixRow(model="m", source_task=task, source_type="sentiment",
                         source_prompt=source, source_seed=seed, target_task="sst2",
                         target_type="sentiment", metric="accuracy", score=score, own_score=80.0,
                         relative=score / 0.8, chance=60.0, normalized=(score - 60) / 0.2,
                         random_score=50.0, eval_examples=100,
                         clearly_above=True if task == "sst2" else None)

    rows = [row("own0", "sst2", 0, 90.0), row("own1", "sst2", 1, 70.0),
            row("src0", "imdb", 0, 75.0), row("src1", "imdb", 1, 65.0)]
    names = [f.name for f in fields(MatrixRow)]
    table = pa.Table.from_pylist([asdict(r) for r in rows]).select(names)
    path = tmp_path / "matrix.parquet"
    pq.write_table(table.replace_schema_metadata({b"ptdist.record": b"MatrixRow",
                                                  b"ptdist.schema_version": b"2"}), path)
    read = {r.source_prompt: r for r in read_records(path, MatrixRow)}
    assert read["src0"].own_score == 90.0 and read["src1"].own_score == 70.0
    assert read["src0"].relative == pytest.approx(100 * 75 / 90)
    assert read["src1"].normalized == pytest.approx(100 * (65 - 60) / (70 - 60))
    assert read["own1"].relative == pytest.approx(100.0)


@pytest.mark.slow
def test_tpt_from_a_same_task_prompt_reaches_vanilla_in_fewer_steps(task_prompts, tmp_path):
    root, data, ids = task_prompts
    env = child_env()
    store = prompts_copy(root / "store", tmp_path / "store")  # the runs go into the copy
    # The source is the sst2 prompt trained with seed 0; vanilla and TPT runs use seed 1.
    proc = subprocess.run(
        [sys.executable, "-m", "ptdist", "transfer", "tpt", "--model", "tiny-roberta",
         "--target-tasks", "sst2", "--source-tasks", "sst2", "--seed", "1", "--steps", "120",
         "--eval-every", "10", "--batch-size", "16", "--lr", "0.1", "--eval-limit", "0",
         "--tolerance", "0.9", "--store", str(store), "--data-dir", str(data), "--json"],
        cwd=tmp_path, env=env, text=True, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    vanilla, tpt = out["summary"]
    assert vanilla["run"] == "vanilla" and vanilla["speedup"] == 1.0
    assert tpt["source_prompt"] == ids["sst2"]
    # Both curves start at step 0: TPT where its (trained) source prompt is, vanilla at chance.
    assert tpt["start_score"] >= 80.0 > vanilla["start_score"]
    # The claim is TPT's speed to near vanilla's best: on these 96 evaluation rows both curves
    # end within a row or two of 100 %, so which one touches the exact best first is noise
    # (measured: vanilla 100 % at step 80, TPT 99.0 % from step 90), while 90 % of it TPT reaches
    # at step 20 and vanilla at step 50.
    assert tpt["steps_to_tolerance"] < vanilla["steps_to_tolerance"]
    folder = Path(out["folders"][0])
    curves = pq.read_table(folder / "curves.parquet").to_pylist()
    assert {c["step"] for c in curves if c["run"] == "vanilla"} >= {0, 10, 120}

    def first(run: str, threshold: float) -> int | None:
        return next((c["step"] for c in curves if c["run"] == run and c["score"] >= threshold),
                    None)

    for field, threshold in (("speedup", vanilla["vanilla_best"]),
                             ("speedup_tolerance", 0.9 * vanilla["vanilla_best"])):
        steps = first(tpt["run"], threshold)
        expected = None if steps is None else \
            first("vanilla", threshold) / steps if steps else float("inf")
        assert tpt[field] == expected, field
    assert tpt["speedup_tolerance"] > 1
    assert tpt["tolerance"] == 0.9
    assert (folder / "curves.png").stat().st_size > 0
    assert "speed-up" in proc.stdout and "90% of it" in proc.stdout
    # Seed 1 has no stored vanilla run: the command says why it trains one.
    assert "training a vanilla run of tiny-roberta on sst2 (seed 1): the store holds no " \
           "vanilla run of it with this seed" in proc.stderr


@pytest.mark.slow
def test_the_matrix_command_runs_a_job_per_target_on_ray(task_prompts, tmp_path):
    root, data, _ = task_prompts
    log = tmp_path / "attempts.log"  # a rule that injects nothing: it counts attempts per job
    env = child_env(PTDIST_FAULTS=json.dumps(fault_rule(log, "matrix *", "error", times=0)))
    store = prompts_copy(root / "store", tmp_path / "store")
    proc = subprocess.run(
        [sys.executable, "-m", "ptdist", "transfer", "matrix", "--model", "tiny-roberta",
         "--tasks", "sst2", "imdb", "--store", str(store), "--data-dir", str(data),
         "--json"], cwd=tmp_path, env=env, text=True, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # A job per target, then the one that joins their rows, each attempted once.
    assert attempts(log) == {"matrix tiny-roberta [1/2]": 1, "matrix tiny-roberta [2/2]": 1,
                             "matrix tiny-roberta": 1}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # Every own prompt of the two tasks is a source: one each.
    sources = own_prompts(Store(store).prompts.select("tiny-roberta", ["sst2", "imdb"]))
    assert len(sources) == 2
    assert len(out["rows"]) == 2 * len(sources) and Path(out["heatmap"]).exists()
    assert "relative performance (%)" in proc.stdout and "chance-normalised" in proc.stdout


def test_tpt_names_the_init_rule_of_a_vanilla_run_stored_before_it(tmp_path):
    """A vanilla run stored before ``schedule``/``optimizer`` were settings and before inits
    were drawn from the seed and task: its config lacks the new settings (read as their
    implicit values, so no difference), and the reason it is trained again is the rule."""
    from dataclasses import replace

    import torch

    from ptdist.orchestration.jobs.stages import why_vanilla_is_trained
    from ptdist.training import TrainConfig

    ours = TrainConfig(model="tiny-roberta", task="sst2", steps=40, prompt_length=1)
    old = {k: v for k, v in ours.to_dict().items() if k not in ("schedule", "optimizer")}
    store = Store(tmp_path)
    stored = replace(_manifest("old", [60], task="sst2", config=old), model="tiny-roberta")
    store.prompts.put(torch.zeros(1, 1), stored)
    assert why_vanilla_is_trained(store, ours, "sst2") == (
        "training a vanilla run of tiny-roberta on sst2 (seed 0): stored run old has the same "
        "settings, but its random init was drawn under the rule 'seed' and runs now draw under "
        "'seed+task' (docs/neurons.md)")


def test_tpt_says_why_it_trains_its_own_vanilla_run(task_prompts):
    from ptdist.orchestration.jobs.stages import why_vanilla_is_trained
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


def test_a_tpt_plan_runs_each_seed_from_that_seeds_source_prompt(tmp_path):
    """Each seed is a replicate of the comparison: its TPT run starts from the source task's
    prompt of that seed and is compared with that seed's vanilla run."""
    import torch

    from ptdist.transfer import task_plan
    from tests.test_store import manifest

    store = Store(tmp_path)
    prompts = []
    for task in ("sst2", "imdb"):
        for seed in (0, 1):
            prompt = torch.zeros(8, 64)
            store.prompts.put(prompt, manifest(f"{task}{seed}", prompt, task=task, seed=seed))
            prompts.append(store.prompts.manifest(f"{task}{seed}"))
    plan = task_plan(store, "tiny-roberta", ["imdb"], ["sst2"], prompts, {"steps": 10},
                     seeds=(0, 1))
    assert [(t, s, label, c.seed, str(c.init)) for t, s, label, c in plan.runs()] == [
        ("imdb", 0, "vanilla", 0, "random"), ("imdb", 0, "tpt from sst2", 0, "prompt:sst20"),
        ("imdb", 1, "vanilla", 1, "random"), ("imdb", 1, "tpt from sst2", 1, "prompt:sst21")]
    # One run (the command line's): the source task's best prompt, whatever its seed.
    store.prompts.put(torch.zeros(8, 64), manifest("best", torch.zeros(8, 64), task="sst2",
                                                    seed=0, score=90.0))
    one = task_plan(store, "tiny-roberta", ["imdb"], ["sst2"],
                    prompts + [store.prompts.manifest("best")], {"steps": 10, "seed": 1})
    assert [(c.seed, str(c.init)) for *_, c in one.runs()] == [(1, "random"), (1, "prompt:best")]
