"""Cross-model transfer between tiny presets of different widths and architectures
(tiny-roberta: MLM, d=64; tiny-t5-d96: T5, d=96): projectors, their two training modes,
evaluation, TPT_model, and the pair scheduler on Ray."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from ptdist.errors import PtdistError
from ptdist.projection.config import ProjectorConfig
from ptdist.projection.evaluation import EvalSettings, evaluate_projector, project_prompts
from ptdist.projection.projector import Projector, ProjectorShape
from ptdist.projection.modes import train_projector
from ptdist.store import Store
from ptdist.store.manifests import ProjectorManifest
from ptdist.store.prompts import best_per_task
from ptdist.store.results import ProjectorEvalRow
from ptdist.store.tables import read_records
from ptdist.training import TrainConfig, train
from tests.conftest import TWO_MODEL_SPEC, child_env, model_forwards

SOURCE, TARGET = "tiny-roberta", "tiny-t5-d96"
TASKS = ("sst2", "imdb", "topic", "topic2")


@pytest.fixture(scope="module")
def two_models(task_prompts, tmp_path_factory) -> tuple[Store, Path, dict[str, str]]:
    """(store, data folder, {task: YAML path or name}): a copy of the tiny-roberta prompts of
    `task_prompts`, plus tiny-t5-d96 prompts for the same four tasks."""
    root, data, _ = task_prompts
    store = Store(tmp_path_factory.mktemp("projection") / "store")
    shutil.copytree(root / "store" / "prompts", store.layout.prompts_dir())
    refs = {"sst2": "sst2", "imdb": "imdb", "topic": str(data / "topic.yaml"),
            "topic2": str(data / "topic2.yaml")}
    for task in refs.values():
        train(TrainConfig(model=TARGET, task=task, steps=80, eval_every=20, prompt_length=8,
                          batch_size=16, lr=0.1, eval_limit=None, data_dir=str(data)), store)
    return store, data, refs


@pytest.fixture(scope="module")
def task_projector(two_models) -> ProjectorManifest:
    """The manifest of a projector tuned through tiny-t5-d96 on topic, from tiny-roberta's
    topic prompt.

    Its budget (160 steps at lr 0.01) was chosen over 15 seeds (3 prompt seeds x 5 projector
    seeds): it beat the untrained projector by 27 to 58 points (the tests ask for 10), where
    the former 80 steps at lr 0.001 fell short in 4 of 15 (+7.3, +4.2, +3.1, +1.0)."""
    store, data, refs = two_models
    return train_projector(_config(store, refs, "task", ["topic"], hidden=64, steps=160,
                                   eval_every=40, lr=0.01, batch_size=16, eval_limit=None,
                                   data_dir=str(data)), store)


def _ids(store: Store, model: str, tasks: list[str]) -> tuple[str, ...]:
    return tuple(sorted(m.id for m in store.prompts.select(model, tasks)))


def _config(store: Store, refs: dict[str, str], mode: str, tasks: list[str], **settings):
    return ProjectorConfig(
        source_model=SOURCE, target_model=TARGET, mode=mode,
        tasks=tuple(refs[t] for t in tasks), source_prompts=_ids(store, SOURCE, tasks),
        target_prompts=_ids(store, TARGET, tasks) if mode == "distance" else (), **settings)


def _both(store: Store) -> list:
    return store.prompts.select(SOURCE) + store.prompts.select(TARGET)


@pytest.mark.parametrize("variant", ["flat", "token"])
def test_parameter_counts_match_the_modules(variant):
    shape = ProjectorShape(variant, length=5, source_width=12, target_width=20, hidden=7)
    projector = Projector(shape)
    assert shape.parameters == sum(p.numel() for p in projector.parameters())
    out = projector(torch.randn(3, 5, 12))
    assert out.shape == (3, 5, 20)
    # The LayerNorm is per token: every output token has zero mean (affine weights at init).
    assert out.mean(-1).abs().max() < 1e-5


def test_a_prompt_of_the_wrong_width_or_length_is_refused():
    projector = Projector(ProjectorShape("flat", 8, 64, 96, hidden=16))
    with pytest.raises(PtdistError, match=r"maps prompts of shape \[8, 64\].*got \[8, 96\]"):
        projector(torch.zeros(8, 96))
    with pytest.raises(PtdistError, match=r"got \[10, 64\]"):
        projector(torch.zeros(10, 64))
    with pytest.raises(PtdistError, match="unknown projector variant 'wide'"):
        ProjectorShape("wide", 8, 64, 96)


def test_missing_prompts_are_named_before_anything_trains(two_models, tmp_path):
    store, data, refs = two_models
    with pytest.raises(PtdistError, match=r"no prompt of model 'tiny-t5'.*sst2.*ptdist train"):
        best_per_task(store.prompts.select("tiny-t5"), ["sst2", "topic"],
                      "of model 'tiny-t5'")
    missing = ProjectorConfig(source_model=SOURCE, target_model=TARGET, mode="task",
                              tasks=("sst2",), source_prompts=("0123456789abcdef",))
    with pytest.raises(PtdistError, match="0123456789abcdef of 'tiny-roberta' are not in store"):
        train_projector(missing, store)


def test_distance_projector_gets_closer_on_held_out_tasks(two_models):
    store, data, refs = two_models
    config = _config(store, refs, "distance", ["sst2", "topic"], hidden=32, steps=200,
                     eval_every=50)
    manifest = train_projector(config, store)
    assert manifest.pairs == 2 and manifest.distance < 0.5 * manifest.initial_distance
    assert train_projector(config, store).created == manifest.created  # stored: not redone
    rows = evaluate_projector(store, config.projector_id, list(refs.values()), _both(store),
                              EvalSettings(data_dir=str(data), eval_limit=None))
    held_out = [r for r in rows if not r.in_training]
    assert {r.task for r in held_out} == {"imdb", "topic2"}
    # Closer than where the projector started. (Until issue 26 every prompt of a seed started
    # from one draw, so a held-out prompt shared its start with the training ones and came
    # within 0.75 x the untrained distance; drawn per task, it shares only what training put
    # there: 0.82 x for one of the two when the draw changed.)
    for row in held_out:
        assert row.distance < row.untrained_distance, row
    table = read_records(store.layout.projector_eval(config.projector_id), ProjectorEvalRow)
    assert table == rows


def test_task_tuned_projector_beats_the_untrained_one_on_its_task(two_models, task_projector):
    store, data, refs = two_models
    manifest = task_projector
    [row] = evaluate_projector(store, manifest.id, [refs["topic"]], _both(store),
                               EvalSettings(data_dir=str(data), eval_limit=None))
    assert row.in_training and row.score == pytest.approx(manifest.score)
    assert row.score >= row.untrained_score + 10, row
    # On its 96 evaluation rows, the paired bootstrap puts the gain clearly above 0, and the
    # majority class (half the rows) is beside it.
    assert 0 < row.gain_low <= row.score - row.untrained_score <= row.gain_high
    assert row.chance == pytest.approx(50.0, abs=10)
    assert row.above_chance_low <= row.score - row.chance <= row.above_chance_high
    assert manifest.shape == {"variant": "flat", "length": 8, "source_width": 64,
                              "target_width": 96, "hidden": 64}


def test_projector_evaluation_runs_the_target_in_its_prompts_precision(two_models,
                                                                        task_projector):
    """The target's own prompts were trained in fp32: evaluated in fp32 unless the setting
    says bf16 (then every forward of the target model is bf16, on the device given)."""
    store, data, refs = two_models
    for precision, dtype in ((None, "float32"), ("bf16", "bfloat16")):
        with model_forwards() as seen:
            evaluate_projector(store, task_projector.id, [refs["topic"]], _both(store),
                               EvalSettings(data_dir=str(data), eval_limit=16,
                                            precision=precision, device="cpu"))
        assert set(seen) == {(dtype, "cpu")}
def test_a_projector_tuned_on_two_tasks_of_a_type_is_tested_on_a_third(two_models,
                                                                        tmp_path_factory):
    """The paper's task tuning: one projector trained through the target model on two topic
    tasks at once, evaluated on an unseen topic task (and on a task of another type).

    Its lr (0.03) was chosen over 15 seeds (3 prompt seeds x 5 projector seeds): each training
    task beat the untrained projector by 13.5 to 59 points (the test asks for 10), where lr
    0.003 fell short in 2 of 15 (-4.2 and 0.0)."""
    from tests.conftest import TOPIC_YAML, keyword_rows, write_jsonl

    store, data, refs = two_models
    third = tmp_path_factory.mktemp("third")
    write_jsonl(third / "topic3" / "train.jsonl",
                keyword_rows(256, 1, ("cricket", "violin"), "text"))
    write_jsonl(third / "topic3" / "eval.jsonl", keyword_rows(96, 2, ("cricket", "violin"), "text"))
    (third / "topic3.yaml").write_text(TOPIC_YAML.format(name="topic3", first="match",
                                                         second="tune"))
    refs = dict(refs, topic3=str(third / "topic3.yaml"))
    for model in (SOURCE, TARGET):
        train(TrainConfig(model=model, task=refs["topic3"], steps=80, eval_every=20,
                          prompt_length=8, batch_size=16, lr=0.1, eval_limit=None,
                          data_dir=str(third)), store)
    config = _config(store, refs, "task", ["topic", "topic2"], hidden=64, steps=160,
                     eval_every=40, lr=0.03, batch_size=16, eval_limit=None,
                     data_dir=str(data))
    manifest = train_projector(config, store)
    assert manifest.tasks == [refs["topic"], refs["topic2"]] and manifest.metric == "mean_primary"
    assert len(manifest.prompts) == 2  # the source model's best prompt of each task
    last = manifest.history[-1]
    assert last["mean_primary"] == pytest.approx((last["topic/accuracy"]
                                                  + last["topic2/accuracy"]) / 2)
    assert manifest.score == max(h["mean_primary"] for h in manifest.history)
    assert manifest.history[0]["step"] == 0
    rows = {r.task: r for r in evaluate_projector(
        store, manifest.id, [refs["topic"], refs["topic2"], refs["topic3"], "sst2"],
        _both(store), EvalSettings(data_dir=str(data), eval_limit=None))}
    assert [(t, r.in_training, r.type_in_training) for t, r in rows.items()] == [
        ("topic", True, True), ("topic2", True, True), ("topic3", False, True),
        ("sst2", False, False)]
    for task in ("topic", "topic2"):  # each training task is learnt through its own prompt
        assert rows[task].score >= rows[task].untrained_score + 10, rows[task]


def test_the_unified_verbalizer_maps_every_class_to_its_word_in_the_union():
    """Two tasks' label words pooled in order of first appearance: a word they share is one
    class; each training row is relabelled to its word's place; evaluation rows are not."""
    from ptdist.training.run import RunData, unified_verbalizer

    binary = RunData([{"label": 0}, {"label": 1}], [{"label": 1}], ["negative", "positive"])
    three = RunData([{"label": 1}, {"label": 2}], [{"label": 2}],
                    ["negative", "moderate", "positive"])
    first, second = unified_verbalizer([binary, three])
    assert first.words == second.words == ["negative", "positive", "moderate"]
    assert [r["label"] for r in first.train] == [0, 1]
    assert [r["label"] for r in second.train] == [2, 1]
    assert second.eval == [{"label": 2}] and three.train == [{"label": 1}, {"label": 2}]


def test_a_projector_tuned_through_the_unified_verbalizer_learns_its_tasks(two_models,
                                                                            monkeypatch):
    """``verbalizer: unified``, the reference's task tuning: both training tasks (sst2 reads
    negative/positive, topic sport/music) are trained through the four words of the two (a
    softmax over all of them) and evaluated with their own two; it is another projector than
    the per-task verbalizer's, and it learns."""
    from dataclasses import replace

    from ptdist.backbones.seq2seq import Seq2SeqBackbone
    from ptdist.tasks import get_task

    store, data, refs = two_models
    seen: set[tuple[str, ...]] = set()
    collate = Seq2SeqBackbone.collate

    def spy(self, rows, words):
        seen.add(tuple(words))
        return collate(self, rows, words)

    monkeypatch.setattr(Seq2SeqBackbone, "collate", spy)
    config = _config(store, refs, "task", ["sst2", "topic"], hidden=64, steps=160,
                     eval_every=40, lr=0.003, batch_size=16, eval_limit=None,
                     data_dir=str(data), verbalizer="unified")
    assert config.projector_id != replace(config, verbalizer="task").projector_id
    with pytest.raises(PtdistError, match="a unified verbalizer is how task tuning reads"):
        replace(config, mode="distance", target_prompts=("any",))
    manifest = train_projector(config, store)
    own = [tuple(get_task(refs[t]).words_for("seq2seq")) for t in ("sst2", "topic")]
    assert seen == {own[0] + own[1], *own}
    assert manifest.config["verbalizer"] == "unified"
    assert manifest.score >= manifest.history[0]["mean_primary"] + 10, manifest.history


def test_a_projected_prompt_only_fits_the_target_model(two_models, task_projector):
    store, data, _ = two_models
    sources = best_per_task(store.prompts.select(SOURCE), ["imdb"], "of the source")
    path = project_prompts(store, task_projector.id, sources)["imdb"]
    assert path == store.layout.projected_prompt(task_projector.id, "imdb")
    assert store.prompts.load(str(path)).shape == (8, 96)
    proc = subprocess.run(
        [sys.executable, "-m", "ptdist", "eval", "--model", SOURCE, "--prompt", str(path),
         "--task", "imdb", "--data-dir", str(data), "--store", str(store.root)],
        env=child_env(), text=True, capture_output=True, timeout=300)
    assert proc.returncode == 2
    assert "prompt width 96 does not match model 'tiny-roberta'" in proc.stderr


def test_train_eval_and_list_through_the_cli(two_models, capsys):
    from tests.test_cli import run

    store, data, refs = two_models
    root = str(store.root)
    code, out, err = run(capsys, "project", "train", "--source-model", SOURCE,
                         "--target-model", TARGET, "--mode", "distance", "--train-tasks", "sst2",
                         "imdb", "--variant", "token", "--hidden", "16", "--steps", "30",
                         "--store", root, "--json")
    assert code == 0, err
    manifest = json.loads(out.strip().splitlines()[-1])
    assert manifest["shape"]["variant"] == "token" and manifest["pairs"] == 2
    assert (manifest["source_model"], manifest["target_model"], manifest["mode"]) == (
        SOURCE, TARGET, "distance")
    code, out, err = run(capsys, "project", "eval", "--projector", manifest["id"], "--tasks",
                         refs["topic"], "--eval-limit", "0", "--data-dir", str(data), "--store",
                         root, "--json")
    assert code == 0, err
    [row] = json.loads(out.strip().splitlines()[-1])["rows"]
    assert row["task"] == "topic" and not row["in_training"] and row["eval_examples"] == 96
    code, out, _ = run(capsys, "project", "list", "--store", root, "--json")
    assert code == 0
    # The fixture's store is shared with this file's other tests, which store projectors too.
    assert manifest["id"] in [m["id"] for m in json.loads(out.strip().splitlines()[-1])
                              ["projectors"]]
    code, _, err = run(capsys, "project", "train", "--source-model", SOURCE, "--target-model",
                       "tiny-t5", "--mode", "distance", "--train-tasks", "sst2", "--store", root)
    assert code == 2 and "ptdist: error: no prompt of model 'tiny-t5'" in err and "sst2" in err


def test_tpt_model_starts_from_the_projected_prompt(two_models, task_projector, tmp_path):
    store, data, refs = two_models
    projector = task_projector
    proc = subprocess.run(
        [sys.executable, "-m", "ptdist", "project", "tpt", "--projector", projector.id,
         "--target-tasks", refs["topic"], "--steps", "60", "--eval-every", "10", "--batch-size",
         "16", "--lr", "0.1", "--eval-limit", "0", "--store", str(store.root), "--data-dir",
         str(data), "--json"], cwd=tmp_path, env=child_env(), text=True, capture_output=True,
        timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    vanilla, tpt = json.loads(proc.stdout.strip().splitlines()[-1])["summary"]
    assert tpt["run"] == f"tpt_model from {SOURCE}" and tpt["target_task"] == "topic"
    started = store.prompts.manifest(tpt["prompt_id"])
    assert started.init == f"prompt:{store.layout.projected_prompt(projector.id, 'topic')}"
    assert started.history[0]["accuracy"] >= projector.score - 10
    assert (Path(json.loads(proc.stdout.strip().splitlines()[-1])["folders"][0])
            / "curves.png").exists()




def _tuning(data: Path, refs: dict[str, str], store: Path) -> list[str]:
    """`ptdist project train` of a small task-tuned projector (checkpoints every 10 steps)."""
    return ["project", "train", "--source-model", SOURCE, "--target-model", TARGET, "--mode",
            "task", "--train-tasks", refs["topic"], "--hidden", "16", "--steps", "30",
            "--eval-every", "10", "--batch-size", "16", "--eval-limit", "48", "--data-dir",
            str(data), "--store", str(store), "--json"]


@pytest.fixture(scope="module")
def uninterrupted_projector(two_models, tmp_path_factory) -> tuple[dict, dict]:
    """(manifest, weights) of `_tuning`'s projector, trained without a fault."""
    from ptdist.cli import main

    store, data, refs = two_models
    root = tmp_path_factory.mktemp("uninterrupted") / "store"
    shutil.copytree(store.layout.prompts_dir(), Store(root).layout.prompts_dir())
    main(_tuning(data, refs, root))
    [manifest] = Store(root).projectors.manifests()
    return manifest.to_json(), Store(root).projectors.weights(manifest.id)


def _last_json(result: tuple[int, str, str]) -> dict:
    """The --json object of a command run by `tests.test_cli.run`, which exited 0."""
    code, out, err = result
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


def _untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in point.items() if k != "time_s"} for point in history]


@pytest.mark.slow
@pytest.mark.parametrize("site,skip", [("*/checkpoint.safetensors", 2),
                                       ("*/projectors/*/manifest.json", 0)],
                         ids=["mid-training", "before its manifest"])
def test_a_killed_projector_training_ends_on_rerun_like_an_uninterrupted_one(
        two_models, uninterrupted_projector, tmp_path, capsys, site, skip):
    """`ptdist project train` SIGKILLed (PTDIST_FAULTS) before its third checkpoint (so it
    resumes from step 10), or between its tensor file and its manifest: nothing is listed,
    and the same command run again stores the projector an uninterrupted run stores."""
    from tests.test_cli import run

    store, data, refs = two_models
    root = tmp_path / "store"
    shutil.copytree(store.layout.prompts_dir(), Store(root).layout.prompts_dir())
    rule = {"match": f"write {site}", "fault": "kill", "skip": skip, "times": 1,
            "log": str(tmp_path / "faults.log")}
    killed = subprocess.run([sys.executable, "-m", "ptdist", *_tuning(data, refs, root)],
                            env=child_env(PTDIST_FAULTS=json.dumps(rule)), text=True,
                            capture_output=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert _last_json(run(capsys, "project", "list", "--store", str(root), "--json"))[
        "projectors"] == []
    # Killed before its manifest, the projector's folder is seen and is no damage (a re-run
    # finishes it); killed mid-training, it has no folder yet.
    checks = Store(root).projectors.check()
    assert len(checks) == ("manifest" in site)
    assert all(c.problem is None and c.note.startswith("incomplete: no manifest")
               for c in checks)
    assert _last_json(run(capsys, "prompts", "--check", "--store", str(root), "--json"))[
        "damaged"] == []

    code, out, err = run(capsys, *_tuning(data, refs, root))
    assert code == 0, err
    again = json.loads(out.strip().splitlines()[-1])
    reference, weights = uninterrupted_projector
    assert again["resumed_from"] == (10 if skip else 30)
    for key in ("id", "score", "best_step", "steps", "prompts", "shape"):
        assert again[key] == reference[key], key
    assert _untimed(again["history"]) == _untimed(reference["history"])
    stored = Store(root).projectors.weights(again["id"])
    assert stored.keys() == weights.keys()
    assert all(torch.equal(stored[k], weights[k]) for k in weights)
    assert [(c.id, c.problem, c.note) for c in Store(root).projectors.check()] == [
        (again["id"], None, None)]


def _pairs(spec: Path, cwd: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "ptdist", "project", "pairs", "--spec", str(spec), "--mode",
         "distance", "--train-tasks", "sst2", "--hidden", "16", "--steps", "50", "--json",
         *extra],
        cwd=cwd, env=child_env(), text=True, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_pair_scheduler_runs_each_job_once_after_its_inputs(two_models, tmp_path):
    _, data, _ = two_models
    spec = tmp_path / "pairs.yaml"
    spec.write_text(TWO_MODEL_SPEC.format(name="pairs", store=tmp_path / "store", data=data))
    proc, out = _pairs(spec, tmp_path)
    jobs = {j["id"]: j for j in out["jobs"]}
    pairs = [f"{SOURCE} -> {TARGET}", f"{TARGET} -> {SOURCE}"]
    assert set(jobs) == {f"prompt {m}/{t}/seed0/random" for m in (SOURCE, TARGET)
                         for t in ("sst2", "topic")} | {f"{kind} {pair}" for pair in pairs
                                                        for kind in ("projector", "eval")}
    assert all(j["status"] == "ran" for j in jobs.values())
    # A projector learns from both models' sst2 prompts (distance); its evaluation also needs
    # the topic prompts. Each job started only after everything it needs had finished.
    assert sorted(jobs[f"projector {pairs[0]}"]["needs"]) == [
        f"prompt {SOURCE}/sst2/seed0/random", f"prompt {TARGET}/sst2/seed0/random"]
    assert len(jobs[f"eval {pairs[0]}"]["needs"]) == 5
    for job in jobs.values():
        for need in job["needs"]:
            assert jobs[need]["finished"] <= job["started"], (need, job["id"])
    assert {j["attempts"] for j in jobs.values()} == {1}
    store = Store(tmp_path / "store")
    projectors = store.projectors.manifests()
    assert sorted((m.source_model, m.target_model) for m in projectors) == \
        sorted([(SOURCE, TARGET), (TARGET, SOURCE)])
    table = pq.read_table(out["table"]).to_pylist()
    assert len(table) == 4 and {r["task"] for r in table} == {"sst2", "topic"}

    # Idempotent: a second run does nothing; losing one table re-runs only that evaluation
    # (the same plan in this process as on Ray: --local saves starting a Ray for it).
    proc, out = _pairs(spec, tmp_path, "--local")
    assert all(j["status"] == "stored" for j in out["jobs"])
    store.layout.projector_eval(projectors[0].id).unlink()
    proc, out = _pairs(spec, tmp_path, "--local")
    assert [j["id"] for j in out["jobs"] if j["status"] == "ran"] == [
        f"eval {projectors[0].source_model} -> {projectors[0].target_model}"]


@pytest.mark.slow
def test_task_tuning_through_a_multi_worker_target_runs_on_a_worker_group(two_models, tmp_path):
    _, data, _ = two_models
    spec = tmp_path / "pairs.yaml"
    spec.write_text(TWO_MODEL_SPEC.format(name="pairs", store=tmp_path / "store", data=data)
                    .replace("tasks: [sst2, {}/topic.yaml]".format(data), "tasks: [sst2]")
                    # half a CPU each: the group and the job that starts it fit 2 cores
                    .replace("tiny-t5-d96: {}", "tiny-t5-d96: {resources: {workers: 2, "
                                                "cpus: 0.5}, ds_config: zero2}"))
    proc = subprocess.run(
        [sys.executable, "-m", "ptdist", "project", "pairs", "--spec", str(spec), "--mode",
         "task", "--train-tasks", "sst2", "--hidden", "16", "--steps", "20", "--eval-every",
         "10", "--batch-size", "16", "--eval-limit", "48", "--json"],
        cwd=tmp_path, env=child_env(), text=True, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    worlds = {(m.source_model, m.target_model): m.world_size
              for m in Store(tmp_path / "store").projectors.manifests()}
    # Task tuning runs through the target: ZeRO-2 on its two Ray Train workers for tiny-t5-d96.
    assert worlds == {(SOURCE, TARGET): 2, (TARGET, SOURCE): 1}
    table = pq.read_table(json.loads(proc.stdout.strip().splitlines()[-1])["table"])
    assert table.num_rows == 2
