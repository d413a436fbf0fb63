"""Sweep specs are validated whole, before anything is scheduled."""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from ptdist.errors import PtdistError
from ptdist.orchestration.planning.resources import check_runs_fit, node_types_from_cluster_config
from ptdist.orchestration.spec.sweep_spec import load_spec, parse_spec
from ptdist.tasks import get_task, task_names

REPO = Path(__file__).resolve().parents[1]


def _spec(tmp_path, **changes) -> dict:
    raw = {"name": "s", "storage_path": str(tmp_path / "store"), "tasks": ["sst2", "imdb"],
           "seeds": [0, 1], "inits": ["random", "vocab"],
           "train": {"steps": 10, "batch_size": 8, "prompt_length": 4},
           "models": {"tiny-roberta": {"resources": {"cpus": 1}},
                      "tiny-t5": {"resources": {"workers": 2, "cpus": 0.5},
                                  "ds_config": "zero2", "train": {"steps": 20}}}}
    raw.update(changes)
    return raw


def test_a_spec_expands_to_every_model_task_seed_init(tmp_path):
    spec = parse_spec(_spec(tmp_path))
    runs = spec.runs()
    assert [(r.config.model, r.config.task, r.config.seed, str(r.config.init)) for r in runs] == [
        (m, t, s, i) for m in ("tiny-roberta", "tiny-t5") for t in ("sst2", "imdb")
        for s in (0, 1) for i in ("random", "vocab")]
    t5 = [r for r in runs if r.config.model == "tiny-t5"]
    assert {r.config.steps for r in t5} == {20}  # per-model budget overrides the sweep's
    assert {r.config.ds_config for r in t5} == {"zero2"}
    assert t5[0].resources.workers == 2 and t5[0].resources.per_worker() == {"CPU": 0.5}
    assert Path(spec.storage_path).is_absolute()


def test_a_model_with_its_own_tasks_runs_only_those_of_the_spec(tmp_path):
    spec = parse_spec(_spec(tmp_path, tasks=["sst2", "imdb", "mnli"], seeds=[0], inits=["random"],
                            models={"tiny-roberta": {}, "tiny-t5": {"tasks": ["mnli", "sst2"]}}))
    assert [(r.config.model, r.config.task) for r in spec.runs()] == [
        ("tiny-roberta", "sst2"), ("tiny-roberta", "imdb"), ("tiny-roberta", "mnli"),
        ("tiny-t5", "sst2"), ("tiny-t5", "mnli")]  # in the spec's order, not the model's


@pytest.mark.parametrize("change,message", [
    ({"sead": [0]}, "unknown key 'sead' in top level (did you mean 'seeds'?)"),
    ({"train": {"step": 5}}, "unknown key 'step' in train (did you mean 'steps'?)"),
    ({"train": {"model": "x"}}, "unknown key 'model' in train"),
    ({"tasks": ["sst2", "sst3"]}, "sst3"),
    ({"inits": ["random", "zeros"]}, "unknown prompt init 'zeros'"),
    ({"seeds": [0, "one"]}, "'seeds[1]' must be an integer (got 'one')"),
    ({"models": {"tiny-robrta": {}}}, "did you mean the preset 'tiny-roberta'"),
    ({"models": {"tiny-roberta": {"gpu": 1}}}, "unknown key 'gpu' in models.tiny-roberta"),
    ({"models": {"tiny-roberta": {"resources": {"gpu": 1}}}},
     "unknown key 'gpu' in models.tiny-roberta.resources (did you mean 'gpus'?)"),
    ({"models": {"tiny-roberta": {"resources": {"gpus": 3, "workers": 2}}}},
     "3 GPUs do not split evenly over 2 workers"),
    ({"models": {"tiny-t5": {"ds_config": "zero2", "precision": "bf16"}}},
     "precision 'bf16' but ds_config 'zero2' runs fp32"),
    ({"models": {"tiny-t5": {"ds_config": "zero9"}}}, "DeepSpeed config 'zero9' not found"),
    ({"models": {"tiny-t5": {"resources": {"workers": 3}}}},
     "batch size 8 does not split over 3 process(es)"),
    ({"train": {"steps": 0}}, "steps must be at least 1"),
    ({"storage_path": "s3://bucket/store"},
     "must be a POSIX folder that every node mounts (EFS, FSx, Filestore, NFS), as cluster.yaml "
     "sets up under /mnt/ptdist: it writes every file atomically by renaming it, which object "
     "stores and their FUSE mounts (mountpoint-s3, s3fs) do not offer. To keep Ray Tune's and "
     "Train's records in S3, set 'ray_storage: s3://bucket/prefix'"),
    ({"max_concurrent": 0}, "'max_concurrent' must be a positive integer"),
    # Strict: YAML types its values, so a value of another type is refused, not converted.
    ({"models": {"tiny-roberta": {"resources": {"cpus": "two"}}}},
     "'models.tiny-roberta.resources.cpus' must be a number (got 'two'); CPUs per worker"),
    ({"models": {"tiny-roberta": {"resources": {"gpus": 1.5}}}},
     "'models.tiny-roberta.resources.gpus' must be an integer (got 1.5)"),
    ({"train": {"lr": "0.1"}}, "'train.lr' must be a number (got '0.1')"),
    ({"models": {"tiny-t5": {"train": {"lr": True}}}},
     "'models.tiny-t5.train.lr' must be a number (got True)"),
    ({"train": {"steps": 1.5}}, "'train.steps' must be an integer (got 1.5)"),
    ({"train": {"steps": True}}, "'train.steps' must be an integer (got True)"),
    ({"max_failures": True}, "'max_failures' must be an integer (got True)"),
    ({"max_failures": -1}, "'max_failures' must be a non-negative integer (got -1)"),
    ({"storage_path": 5}, "'storage_path' must be a string (got 5)"),
    ({"name": "../../../../tmp/x"}, "'name' must be one plain name (letters, digits"),
    ({"name": "/tmp/x"}, "'name' must be one plain name"),
    ({"name": ".."}, "'name' must be one plain name"),
    ({"models": {"tiny-roberta": 3}}, "'models.tiny-roberta' must be a mapping (got 3); keys: "
                                      "resources, ds_config"),
])
def test_a_bad_spec_names_the_bad_key_or_value(tmp_path, change, message):
    with pytest.raises(PtdistError) as err:
        parse_spec(_spec(tmp_path, **change))
    assert message in str(err.value)


@pytest.mark.parametrize("content,message", [
    (b"name: s\nseeds: &x [1, *x]\n", "holds itself through an alias (line 2)"),
    (b"name: s\nseeds: " + b"[" * 100_000 + b"]" * 100_000 + b"\n",
     "nests its values deeper than ptdist reads"),
    (b"name: s\nseeds: &a [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]\n" + b"".join(
        f"s{i}: &a{i} [".encode() + b", ".join([b"*a" if i == 1 else f"*a{i - 1}".encode()] * 10)
        + b"]\n" for i in range(1, 6)), "expands to more than 100,000 values"),
    ("name: caf\xe9\n".encode("latin-1"), "is not UTF-8 text: byte 9 (0xe9)"),
], ids=["alias of itself", "nested 100,000 deep", "aliases past the bound", "latin-1"])
def test_a_spec_file_that_cannot_be_walked_is_refused_before_it_is(tmp_path, content,
                                                                  message):
    (tmp_path / "spec.yaml").write_bytes(content)
    with pytest.raises(PtdistError, match="sweep spec .*spec.yaml") as err:
        load_spec(tmp_path / "spec.yaml")
    assert message in str(err.value)


def test_a_missing_required_key_is_named(tmp_path):
    raw = _spec(tmp_path)
    del raw["models"]
    with pytest.raises(PtdistError, match="missing required key 'models'; map model names"):
        parse_spec(raw)


def test_ints_stand_for_floats_and_one_name_for_a_list(tmp_path):
    spec = parse_spec(_spec(tmp_path, tasks="sst2", seeds=3, train={"lr": 1},
                            models={"tiny-roberta": {"resources": {"cpus": 2}}}))
    run = spec.runs()[0]
    assert spec.tasks == ("sst2",) and spec.seeds == (3,)
    assert run.resources.cpus == 2.0 and run.config.lr == 1


def test_runs_that_no_node_type_can_hold_are_refused(tmp_path):
    raw = _spec(tmp_path, models={"tiny-t5": {"resources": {"gpus": 16, "workers": 1}}})
    runs = parse_spec(raw).runs()
    with pytest.raises(PtdistError) as err:
        check_runs_fit(runs, node_types_from_cluster_config(REPO / "cluster.yaml"), "cluster.yaml")
    assert "tiny-t5 asks for 1 CPU, 16 GPU (1 worker)" in str(err.value)
    assert "gpu_8x: 96 CPU, 8 GPU" in str(err.value)
    # A worker group is one node: 16 GPUs over 8 workers still need 16 GPUs on one node.
    split = parse_spec(_spec(tmp_path, models={"tiny-t5": {"resources": {"gpus": 16,
                                                                         "workers": 8}}}))
    with pytest.raises(PtdistError, match="worker group of 8 workers x 1 CPU, 2 GPU, which "
                                          "needs 8 CPU, 16 GPU on one node"):
        check_runs_fit(split.runs(), node_types_from_cluster_config(REPO / "cluster.yaml"), "x")
    node = parse_spec(_spec(tmp_path, models={"tiny-t5": {"resources": {"gpus": 8, "cpus": 12,
                                                                        "workers": 8}}}))
    check_runs_fit(node.runs(), node_types_from_cluster_config(REPO / "cluster.yaml"), "x")
    # 8 x 12 CPUs take all 96 of gpu_8x: the job's coordinator goes to another node (the head)


def test_ray_records_go_to_ray_storage_and_the_store_stays_on_its_file_system(tmp_path):
    spec = parse_spec(_spec(tmp_path, ray_storage="s3://bucket/ptdist-ray"))
    store = spec.store()
    assert store.root == tmp_path / "store"
    assert store.ray_records("tune") == "s3://bucket/ptdist-ray/tune"
    assert pickle.loads(pickle.dumps(store)).ray_records("train") == \
        "s3://bucket/ptdist-ray/train"  # as a job carries it
    assert parse_spec(_spec(tmp_path)).store().ray_records("tune") == \
        str(tmp_path / "store" / "ray" / "tune")


def test_a_model_is_pinned_to_a_gpu_type_or_a_custom_resource(tmp_path):
    spec = parse_spec(_spec(tmp_path, models={"tiny-t5": {"resources": {
        "gpus": 2, "cpus": 4, "accelerator_type": "H100", "custom": {"gpu_80gb": 1},
        "start_timeout_s": 60}}}))
    res = spec.runs()[0].resources
    assert res.per_worker() == {"CPU": 4.0, "GPU": 1.0, "accelerator_type:H100": 0.001,
                                "gpu_80gb": 1.0}
    assert res.group() == {"CPU": 8.0, "GPU": 2.0, "accelerator_type:H100": 0.002,
                           "gpu_80gb": 2.0}
    assert res.start_timeout_s == 60 and res.one_device().per_worker()["GPU"] == 1
    with pytest.raises(PtdistError, match="accelerator_type:H100"):  # no H100 node type
        check_runs_fit(spec.runs(), node_types_from_cluster_config(REPO / "cluster.yaml"), "x")


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ptdist", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=120)


def test_the_cli_stops_on_a_bad_spec_before_scheduling_anything(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_spec(tmp_path, models={"tiny-roberta": {"ds_conf": "x"}})))
    proc = _run_cli("sweep", "--spec", str(path))
    assert proc.returncode == 2
    # One line, nothing before it (no cluster was started), and no store.
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"ptdist: error: sweep spec {path}: unknown key 'ds_conf' in "
                           "models.tiny-roberta (did you mean 'ds_config'?)"), line
    assert not (tmp_path / "store").exists()


def test_the_cli_names_a_value_of_the_wrong_type_in_one_line(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(_spec(tmp_path, models={
        "tiny-roberta": {"resources": {"cpus": "two"}}})))
    proc = _run_cli("sweep", "--spec", str(path), "--dry-run")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"ptdist: error: sweep spec {path}: 'models.tiny-roberta.resources.cpus' must be a "
        "number (got 'two'); CPUs per worker, e.g. cpus: 8"]


def test_a_dry_run_names_the_packaged_data_a_run_would_prepare_first(tmp_path):
    """A dry run writes nothing, so the data sets a run fetches on first use are not there yet:
    it says so and how to go on, instead of failing on their missing files."""
    # The example task file, copied where its own files (../../data/bbc_news/) are not.
    task = tmp_path / "a" / "b" / "bbc_news.yaml"
    task.parent.mkdir(parents=True)
    task.write_text((REPO / "examples" / "tasks" / "bbc_news.yaml").read_text())
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_spec(tmp_path, tasks=[str(task)], data_dir=str(
        tmp_path / "data"), models={"tiny-roberta": {}})))
    proc = _run_cli("sweep", "--spec", str(path), "--dry-run")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"ptdist: error: the data of bbc_news is not in {tmp_path / 'data'} yet: a run of this "
        "study prepares it first (from the package index), and a dry run writes nothing. Run "
        "it once without --dry-run, or give --data-dir a folder that holds it"]
    assert not (tmp_path / "data").exists()


def test_dry_run_lists_the_runs_without_running_them(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_spec(tmp_path)))
    # Unpacked (how many runs a pack takes depends on this machine's cores: test_packed.py)
    proc = _run_cli("sweep", "--spec", str(path), "--dry-run", "--no-pack")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("would run") == 16
    assert "tiny-t5/imdb/seed1/vocab: 20 steps, 2 worker(s) x 0.5 CPU, 0 GPU = 1 CPU, 0 GPU " \
           "on one node, zero2" in proc.stdout
    # The memory plan of each model, from its config (no weights loaded): per process on CPU.
    assert "  tiny-t5: 2 worker(s) on one node holding 1 CPU, 0 GPU, ZeRO-2, fp32" in proc.stdout
    assert "MB) per process (no GPU)" in proc.stdout
    assert not (tmp_path / "store" / "prompts").exists()


def test_example_specs_are_valid(tmp_path):
    for path in sorted((REPO / "specs").glob("*.yaml")):
        assert load_spec(path).runs(), path
    paper = load_spec(REPO / "specs" / "paper.yaml")
    # The paper's grid: every task ptdist registers (the paper's), on nodes cluster.yaml has.
    assert {get_task(t).name for t in paper.tasks} == set(task_names())
    check_runs_fit(paper.runs(), node_types_from_cluster_config(REPO / "cluster.yaml"),
                   "cluster.yaml")


def test_the_quickstart_study_loads_before_its_models_and_data_are_fetched(tmp_path):
    """Its converted model is known by name and its data is prepared on first use: the study
    loads with neither converted nor prepared yet, and holds what its report compares."""
    from ptdist.orchestration.spec.study_spec import load_study

    loaded = load_study(REPO / "specs" / "quickstart.yaml", storage_path=str(tmp_path))
    types = Counter(get_task(t).type for t in loaded.spec.tasks)
    # Same-type and cross-type pairs, and three sources per target for the per-target Spearman.
    assert len(types) >= 2 and max(types.values()) >= 2 and len(loaded.spec.tasks) >= 4
    # Three seeds: the unit the report's intervals resample (the spec's header says why).
    assert len(loaded.spec.seeds) >= 3
    assert len(loaded.spec.models) == 2  # the projectors' two models
    assert loaded.projection.mode == "task" and loaded.tpt.targets


def test_relative_paths_in_a_spec_file_are_relative_to_the_file(tmp_path, monkeypatch):
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "mine.json").write_text((REPO / "ds_configs" / "zero2.json").read_text())
    raw = _spec(tmp_path, storage_path="../store", data_dir="data",
                tasks=["../examples/tweets.yaml"],
                models={"tiny-roberta": {"ds_config": "mine.json"}})
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "tweets.yaml").write_text(
        (REPO / "examples" / "tasks" / "tweets.yaml").read_text())
    (folder / "s.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(REPO)  # somewhere else entirely
    spec = load_spec(folder / "s.yaml", data_dir="elsewhere")
    run = spec.runs()[0]
    assert spec.storage_path == str(tmp_path / "store")
    assert run.config.task == str(tmp_path / "examples" / "tweets.yaml")
    assert run.config.ds_config == str(folder / "mine.json")
    assert spec.data_dir == str(REPO / "elsewhere")  # a command-line override: relative to cwd


def test_the_paper_tasks_study_has_four_types_two_of_them_with_two_or_more_tasks(tmp_path):
    """Four task types, two with several tasks, at the paper's constant rate; a second model
    on the sentiment tasks, whose projectors are task-tuned on three of them through the
    unified verbalizer and tested on the fourth."""
    from ptdist.orchestration.spec.study_spec import load_study

    loaded = load_study(REPO / "specs" / "paper-tasks.yaml", storage_path=str(tmp_path))
    types = Counter(get_task(t).type for t in loaded.spec.tasks)
    assert len(types) == 4 and sum(n >= 2 for n in types.values()) >= 2, types
    runs = loaded.spec.runs()
    # docs/deviations.md: the paper's constant rate, and batches from length buckets.
    assert {(r.config.schedule, r.config.warmup) for r in runs} == {("constant", 0)}
    assert all(r.config.bucket_window for r in runs)
    projection = loaded.projection
    assert projection.mode == "task" and projection.projector["verbalizer"] == "unified"
    trained = {get_task(t).name for t in projection.train_tasks}
    assert {get_task(t).type for t in trained} == {"sentiment"} and len(trained) == 3
    second = loaded.spec.models[1]
    unseen = [t for t in loaded.spec.tasks_of(second) if get_task(t).name not in trained]
    assert [get_task(t).type for t in unseen] == ["sentiment"]
