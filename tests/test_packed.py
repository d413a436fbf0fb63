"""Packed multi-prompt tuning: K runs on one frozen backbone give, bit for bit, the prompts of K
separate runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ptdist.errors import PtdistError
from ptdist.orchestration.jobs.runs import pack_runs, plan_sweep, prompt_jobs
from ptdist.orchestration.planning.plans import Packing, pack_fits
from ptdist.orchestration.planning.resources import Cluster
from ptdist.orchestration.spec.sweep_spec import Resources, RunSpec, load_spec
from ptdist.store import Store
from ptdist.store.results import SweepRow
from ptdist.store.tables import read_records
from ptdist.training import TrainConfig, train
from ptdist.training.checkpoint import load_checkpoint
from ptdist.training.hardware import card
from ptdist.training.packed import train_packed
from ptdist.training.tracking import RunTracker
from tests.conftest import (TOPIC_YAML, attempts, child_env, fault_rule, keyword_rows, write_jsonl,
                            zero3_every_tensor_partitioned)

REPO = Path(__file__).resolve().parents[1]
# A node with room for many one-CPU jobs: how many run at once is then max_concurrent's.
BIG_CPU_NODE = Cluster({"cpu": {"CPU": 64.0}}, {"cpu": 1}, "a 64-CPU test node")
T4_NODE = Cluster({"t4": {"CPU": 8.0, "GPU": 1.0, "accelerator_type:T4": 1.0}}, {"t4": 1},
                  "a T4 test node")


@pytest.fixture(scope="module")
def two_tasks(sentiment_dir: Path) -> tuple[Path, str]:
    """The sst2 data folder plus a topic task of other label words and text lengths."""
    words = ("football", "guitar")
    write_jsonl(sentiment_dir / "topic" / "train.jsonl", keyword_rows(64, 1, words, "text"))
    write_jsonl(sentiment_dir / "topic" / "eval.jsonl", keyword_rows(32, 2, words, "text"))
    topic = sentiment_dir / "topic.yaml"
    topic.write_text(TOPIC_YAML.format(name="topic", first="sport", second="music"))
    return sentiment_dir, str(topic)


def _configs(data: Path, topic: str, **settings) -> list[TrainConfig]:
    """Three runs that differ in task, seed, init, learning rate, optimizer and schedule."""
    common = dict(prompt_length=4, batch_size=8, eval_limit=32, warmup_steps=2,
                  data_dir=str(data), **settings)
    return [TrainConfig(task="sst2", seed=0, lr=0.1, **common),
            TrainConfig(task="sst2", seed=1, init="vocab", lr=0.05, optimizer="adam", **common),
            TrainConfig(task=topic, seed=2, lr=0.1, schedule="constant", **common)]


def _assert_same_runs(separate, packed, a: Store, b: Store) -> None:
    """Same ids, step counts, prompts, Adam moments and evaluation history, bit for bit."""
    for one, pack in zip(separate, packed):
        assert one.prompt_id == pack.prompt_id  # packing does not change what a run is
        assert (one.steps_run, one.best_step) == (pack.steps_run, pack.best_step)
        saved_one, _ = load_checkpoint(a.layout.run_dir(one.prompt_id))
        saved_pack, _ = load_checkpoint(b.layout.run_dir(pack.prompt_id))
        for key in ("weight", "weight.exp_avg", "weight.exp_avg_sq", "best.weight", "adam_step"):
            assert torch.equal(saved_pack[key], saved_one[key]), key
        assert torch.equal(b.prompts.tensor(pack.prompt_id), a.prompts.tensor(one.prompt_id))
        assert [{k: v for k, v in h.items() if k != "time_s"} for h in pack.history] == \
            [{k: v for k, v in h.items() if k != "time_s"} for h in one.history]


def test_packed_runs_update_as_separate_runs(tmp_path, two_tasks):
    """Three runs of two tasks (other label words, other text lengths) with their own seeds,
    inits, learning rates and optimizers, two accumulation steps per update."""
    ds = tmp_path / "accumulate.json"
    ds.write_text(json.dumps({"gradient_accumulation_steps": 2}))
    configs = _configs(*two_tasks, model="tiny-roberta", steps=6, eval_every=3,
                       ds_config=str(ds))
    separate_store, packed_store = Store(tmp_path / "one"), Store(tmp_path / "pack")
    separate = [train(c, separate_store) for c in configs]
    packed = train_packed(configs, packed_store)
    _assert_same_runs(separate, packed, separate_store, packed_store)
    assert packed_store.prompts.manifest(packed[0].prompt_id).packed_with == \
        [r.prompt_id for r in packed]
    again = train_packed(configs, packed_store)
    assert all(r.skipped for r in again)


def test_packed_runs_with_the_levers_on_update_as_separate_runs(tmp_path, two_tasks):
    """Length-bucketed batches, each task's own cut and early stopping (issue 28), set
    differently per run: a pack still gives each run's bits, and stops each where it stops
    alone."""
    configs = _configs(*two_tasks, model="tiny-roberta", steps=8, eval_every=2)
    levers = [dict(bucket_window=3, length_quantile=0.5),
              dict(length_quantile=0.9, patience=1, min_steps=2, lr=1e-9),
              dict(bucket_window=2)]
    configs = [TrainConfig(**{**c.to_dict(), **lever}) for c, lever in zip(configs, levers)]
    separate_store, packed_store = Store(tmp_path / "one"), Store(tmp_path / "pack")
    separate = [train(c, separate_store) for c in configs]
    packed = train_packed(configs, packed_store)
    _assert_same_runs(separate, packed, separate_store, packed_store)
    assert separate[1].steps_run < 8  # the flat run stopped early, in the pack as alone
    cuts = [packed_store.prompts.manifest(r.prompt_id).text_cut for r in packed]
    assert cuts[0] is not None and cuts[1] is not None and cuts[2] is None


def test_packed_encoder_decoder_runs_update_as_separate_runs(tmp_path, two_tasks):
    """T5 targets of different lengths, decoded per run."""
    configs = _configs(*two_tasks, model="tiny-t5", steps=2, eval_every=2)[::2]
    separate_store, packed_store = Store(tmp_path / "one"), Store(tmp_path / "pack")
    separate = [train(c, separate_store) for c in configs]
    packed = train_packed(configs, packed_store)
    _assert_same_runs(separate, packed, separate_store, packed_store)


def test_packed_runs_under_zero3_update_as_separate_runs(tmp_path, two_tasks):
    """The T5 v1.1 (a head of its own) with every tensor partitioned; T5's rounding, as
    above, hence the looser bound."""
    configs = _configs(*two_tasks, model="tiny-t5-v1_1", steps=2, eval_every=2,
                       ds_config=str(zero3_every_tensor_partitioned(tmp_path)))[:2]
    separate_store, packed_store = Store(tmp_path / "one"), Store(tmp_path / "pack")
    separate = [train(c, separate_store) for c in configs]
    packed = train_packed(configs, packed_store)
    _assert_same_runs(separate, packed, separate_store, packed_store)


def test_an_interrupted_pack_resumes_each_run_from_its_checkpoint(tmp_path, two_tasks,
                                                                  monkeypatch):
    configs = _configs(*two_tasks, model="tiny-roberta", steps=4, eval_every=2)[:2]
    reference = Store(tmp_path / "reference")
    uninterrupted = train_packed(configs, reference)

    record = RunTracker.record

    def crash_after_first_evaluations(tracker, *args, **kwargs):
        if tracker.state.step > 2:
            raise KeyboardInterrupt("interrupted")
        return record(tracker, *args, **kwargs)

    store = Store(tmp_path / "store")
    monkeypatch.setattr(RunTracker, "record", crash_after_first_evaluations)
    with pytest.raises(KeyboardInterrupt):
        train_packed(configs, store)
    monkeypatch.setattr(RunTracker, "record", record)
    resumed = train_packed(configs, store)
    assert [r.resumed_from for r in resumed] == [2, 2]
    _assert_same_runs(uninterrupted, resumed, reference, store)


def test_runs_that_cannot_share_a_backbone_are_not_packed(two_tasks):
    data, topic = two_tasks
    with pytest.raises(PtdistError, match="must share their model"):
        train_packed([TrainConfig(model="tiny-roberta", task="sst2"),
                      TrainConfig(model="tiny-t5", task="sst2")])


def test_a_spec_packs_runs_of_one_model_up_to_its_pack_size(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "storage_path": str(tmp_path / "store"), "tasks": ["sst2", "imdb"], "seeds": [0, 1, 2],
        "pack": 4, "train": {"steps": 2},
        "models": {"tiny-roberta": {}, "tiny-t5": {"pack": 1}}}))
    jobs = pack_runs(plan_sweep(load_spec(spec), Store(tmp_path / "store")))
    assert [len(job) for job in jobs] == [4, 2] + [1] * 6
    assert {run.config.model for job in jobs[:2] for run, _ in job} == {"tiny-roberta"}
    spec.write_text(spec.read_text().replace("pack: 4", "pack: 0"))
    with pytest.raises(PtdistError, match="'pack' must be a positive integer or 'auto'"):
        load_spec(spec)


def test_by_default_the_runs_of_a_model_are_packed_into_as_many_jobs_as_run_at_once(tmp_path):
    """Six runs of a model, two jobs at once: two packs of three (packing never idles a slot
    that separate runs would fill); `pack: 1` or the command line's override: one job a run."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "storage_path": str(tmp_path / "store"), "tasks": ["sst2", "imdb"], "seeds": [0, 1, 2],
        "max_concurrent": 2, "train": {"steps": 2},
        "models": {"tiny-roberta": {}, "tiny-t5": {"pack": 1}}}))
    store = Store(tmp_path / "store")
    jobs = prompt_jobs(plan_sweep(load_spec(spec), store), store,
                       Packing(BIG_CPU_NODE, max_concurrent=2)).unique()
    assert len(jobs) == 2 + 6
    assert [j.id for j in jobs if j.id.startswith("pack ")] == [
        "pack tiny-roberta/sst2/seed0/random +2", "pack tiny-roberta/imdb/seed0/random +2"]
    unpacked = load_spec(spec, pack=1)
    assert all(len(job) == 1 for job in pack_runs(plan_sweep(unpacked, store),
                                                  Packing(BIG_CPU_NODE, serial=True)))


@pytest.mark.slow
def test_a_default_sweep_packs_its_runs_and_they_equal_the_runs_of_no_pack(tmp_path, two_tasks):
    """`ptdist sweep --local` with the default packing trains the four runs of the model in
    one job (the jobs run one at a time); `--no-pack` trains each alone; same prompts."""
    data, topic = two_tasks
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "storage_path": str(tmp_path / "store"), "data_dir": str(data),
        "tasks": ["sst2", topic], "seeds": [0, 1],
        "train": {"steps": 2, "eval_every": 2, "prompt_length": 4, "batch_size": 8,
                  "eval_limit": 16},
        "models": {"tiny-roberta": {}}}))
    stores = {}
    for name, flags in (("default", []), ("no-pack", ["--no-pack"])):
        stores[name] = Store(tmp_path / name)
        proc = subprocess.run([sys.executable, "-m", "ptdist", "sweep", "--spec", str(spec),
                               "--local", "--store", str(tmp_path / name), *flags],
                              capture_output=True, text=True, env=child_env(), cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-3000:]
    packed, alone = stores["default"], stores["no-pack"]
    ids = sorted(m.id for m in packed.prompts.manifests())
    assert len(ids) == 4 and sorted(m.id for m in alone.prompts.manifests()) == ids
    for pid in ids:
        assert sorted(packed.prompts.manifest(pid).packed_with) == sorted(ids)
        assert alone.prompts.manifest(pid).packed_with is None
        assert torch.equal(packed.prompts.tensor(pid), alone.prompts.tensor(pid))


def test_a_pack_is_only_as_large_as_the_memory_planner_fits_on_the_gpu():
    """A pack holds one run's micro-batch in a forward at a time and every run's prompt
    state: a run that fits packs up to `AUTO_PACK`, each prompt state adding to the card's
    load; a run whose own forward does not fit packs with nothing."""
    t4 = card("T4")
    # Sixteen micro-batches of 4,096 in one forward would not fit a T4 (packs did that before
    # issue 26); one at a time they do.
    big = RunSpec(TrainConfig(model="tiny-roberta", task="sst2", batch_size=2 ** 12),
                  Resources(gpus=1, accelerator_type="T4"))
    assert pack_fits(big, 1, t4) and pack_fits(big, 16, t4)
    # (Packing itself leaves such a run alone: at micro-batch 4,096 it fills the T4 by itself,
    # `compute_bound`.) A run that neither fills the card nor overflows it packs up to 16.
    small = RunSpec(TrainConfig(model="tiny-roberta", task="sst2", batch_size=8),
                    Resources(gpus=1, accelerator_type="T4"))
    planned = [(small, f"p{i}") for i in range(16)]
    assert [len(job) for job in pack_runs(planned, Packing(T4_NODE, serial=True))] == [16]
    huge = RunSpec(TrainConfig(model="tiny-roberta", task="sst2", batch_size=2 ** 16),
                   Resources(gpus=1, accelerator_type="T4"))
    assert not pack_fits(huge, 1, t4)
    planned = [(huge, f"p{i}") for i in range(4)]
    assert [len(job) for job in pack_runs(planned, Packing(T4_NODE, serial=True))] == [1] * 4


@pytest.mark.slow
def test_a_sweep_trains_a_pack_on_a_two_worker_group_and_reports_each_run(tmp_path, two_tasks):
    """`pack: 2` in a spec: one Ray Train job of two processes (ZeRO-3, every tensor of the
    T5 v1.1 partitioned, its own head kept apart) trains both runs; each is its own row and
    prompt, equal to the same pack trained by one process, with the same loss history (the
    global batch's, not rank 0's)."""
    data, topic = two_tasks
    spec = tmp_path / "packed.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "packed", "storage_path": str(tmp_path / "store"), "data_dir": str(data),
        "tasks": ["sst2", topic], "pack": 2,
        "train": {"steps": 4, "eval_every": 2, "prompt_length": 4, "batch_size": 8,
                  "eval_limit": 32, "lr": 0.1},
        "models": {"tiny-t5-v1_1": {"resources": {"workers": 2, "cpus": 0.5},
                                    "ds_config": str(zero3_every_tensor_partitioned(tmp_path))}}}))
    log = tmp_path / "attempts.log"
    proc = subprocess.run([sys.executable, "-m", "ptdist", "sweep", "--spec", str(spec)],
                          cwd=REPO, text=True, capture_output=True, timeout=600,
                          env=child_env(PTDIST_FAULTS=json.dumps(fault_rule(log, "pack *",
                                                                            "error", times=0))))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # One job, a pack of the two runs, attempted once on the group's two workers.
    pack = "pack tiny-t5-v1_1/sst2/seed0/random +1"
    assert attempts(log) == {pack: 1, f"{pack}@worker": 2}
    store = Store(tmp_path / "store")
    rows = read_records(store.layout.sweep_table("packed"), SweepRow)
    assert [r.status for r in rows] == ["trained", "trained"]
    one_process = Store(tmp_path / "one")
    configs = [run.config for run in load_spec(spec).runs()]
    for row, result in zip(rows, train_packed(configs, one_process)):
        manifest = store.prompts.manifest(row.prompt_id)
        assert manifest.world_size == 2 and manifest.score == row.score
        assert sorted(manifest.packed_with) == sorted(r.prompt_id for r in rows)
        torch.testing.assert_close(store.prompts.tensor(row.prompt_id),
                                   one_process.prompts.tensor(result.prompt_id), atol=1e-4,
                                   rtol=0)
        assert [h["loss"] for h in manifest.history] == pytest.approx(
            [h["loss"] for h in result.history], abs=1e-4)


def test_a_diverging_run_of_a_pack_is_named_and_the_others_are_stored(tmp_path, two_tasks):
    """lr 1e30 sends the prompt to ~1e30 in one step: the next forward is no longer finite."""
    sane, wild = _configs(*two_tasks, model="tiny-roberta", steps=4, eval_every=2)[:2]
    wild = TrainConfig(**{**wild.to_dict(), "lr": 1e30})
    store = Store(tmp_path)
    with pytest.raises(PtdistError, match=r"diverged at step \d: the loss is not finite") as err:
        train_packed([sane, wild], store)
    assert "seed 1" in str(err.value) and "1 other run(s) of its pack" in str(err.value)
    assert [m.seed for m in store.prompts.manifests()] == [0]
