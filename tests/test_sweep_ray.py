"""Sweeps on real Ray: `ray job submit` to a local head (one submission, whose outcome several
tests read, and a re-submission), a killed worker, a user error, and an autoscaling (fake
multi-node) cluster. Everything binds to loopback."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from ptdist.orchestration.spec.sweep_spec import load_spec
from ptdist.store import Store
from ptdist.store.results import SweepRow
from ptdist.store.tables import read_records
from ptdist.training import train
from tests.conftest import (attempts, child_env, fault_rule, free_port, has_trained_checkpoint,
                            zero3_every_tensor_partitioned)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TRAIN = {"prompt_length": 8, "batch_size": 16, "lr": 0.1, "eval_limit": 64}

# Ray 2.5x+ authenticates clients with a token; each test session's clusters get their own.
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}

pytestmark = pytest.mark.slow


def _env() -> dict:
    return child_env(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
                     RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", **AUTH)


def _write_spec(path: Path, models: dict, store: Path, data_dir: Path, steps: int,
                **extra) -> Path:
    spec = {"name": path.stem, "storage_path": str(store), "data_dir": str(data_dir),
            "tasks": ["sst2"], "seeds": [0], "train": dict(TRAIN, steps=steps, eval_every=10),
            "models": models, **extra}
    path.write_text(yaml.safe_dump(spec))
    return path


def _rows(store: Path, name: str) -> list[SweepRow]:
    return read_records(Store(store).layout.sweep_table(name), SweepRow)


def _sweep(spec: Path, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`ptdist sweep --spec SPEC --json ARGS` (``env`` added to its environment)."""
    return subprocess.run([sys.executable, "-m", "ptdist", "sweep", "--spec", str(spec), "--json",
                           *args], cwd=cwd, env=dict(_env(), **env), text=True,
                          capture_output=True, timeout=600)


def _runs(proc: subprocess.CompletedProcess) -> list[dict]:
    """The rows of the runs a `_sweep` reported in its --json result (which a failure follows
    with its error's line)."""
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return next(line for line in reversed(lines) if "runs" in line)["runs"]


def _attempt_log(log: Path) -> dict[str, str]:
    """PTDIST_FAULTS that injects nothing and logs each attempt of every job to ``log``."""
    return {"PTDIST_FAULTS": json.dumps(fault_rule(log, "prompt *", "error", times=0))}


def _ray(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "ray"), *args], env=_env(), text=True, capture_output=True,
                          timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _kill_tree(pid: int) -> None:
    tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for proc in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(tree, timeout=60)


@contextlib.contextmanager
def _ray_head(port: int, *args: str, env: dict | None = None):
    """A Ray head started like a user would (`ray start --head`, here with --block), stopped by
    killing its own process tree: `ray stop` would stop every Ray on this machine, a
    developer's or another test run's too."""
    head = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", f"--port={port}",
                             "--disable-usage-stats", *args], env=env or _env(), text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.time() + 180
        while subprocess.run([str(BIN / "ray"), "status", f"--address=127.0.0.1:{port}"],
                             env=_env(), capture_output=True).returncode:
            assert head.poll() is None and time.time() < deadline, head.stderr.read()[-3000:]
            time.sleep(1)
        yield
    finally:
        _kill_tree(head.pid)


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head on loopback only; yields its job server's address once it takes jobs. Every
    port it opens is a free one: another Ray on this machine may hold the defaults (with its
    dashboard agent's port taken, a job submission finds "No available agent")."""
    dashboard = free_port()
    ports = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
             "runtime-env-agent-port", "ray-client-server-port", "node-manager-port",
             "object-manager-port")
    with _ray_head(free_port(), "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
                   f"--dashboard-port={dashboard}", "--num-cpus=2",
                   *(f"--{name}={free_port()}" for name in ports)):
        address, deadline = f"http://127.0.0.1:{dashboard}", time.time() + 180
        while subprocess.run([str(BIN / "ray"), "job", "list", "--address", address],
                             env=_env(), capture_output=True).returncode:
            assert time.time() < deadline, "the head's job server never answered"
            time.sleep(2)
        yield address


@pytest.fixture(scope="module")
def another_ray():
    """A second Ray on this machine (a driver's local one, as `ptdist sweep` starts), alive while
    the test's head runs jobs: what a Ray process of the head's job finds when it looks for "the
    local cluster" without being told its address."""
    code = ("import sys, ray; ray.init(address='local', _node_ip_address='127.0.0.1', "
            "include_dashboard=False, num_cpus=0); print('up', flush=True); sys.stdin.read()")
    other = subprocess.Popen([sys.executable, "-c", code], env=_env(), text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert other.stdout.readline().strip() == "up"
        yield
    finally:
        _kill_tree(other.pid)


def _torchrun_prompt(tmp_path: Path, spec: Path, model: str, data_dir: Path,
                     prompt_id: str) -> torch.Tensor:
    """The prompt of the spec's run of ``model`` (``prompt_id``: the id is the same whatever
    runs it) trained by two processes under torchrun."""
    run = next(r.config for r in load_spec(spec).runs() if r.config.model == model)
    store = tmp_path / "torchrun"
    proc = subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "ptdist", "train",
         "--model", model, "--task", run.task, "--data-dir", str(data_dir), "--store",
         str(store), "--ds-config", run.ds_config, "--steps", str(run.steps),
         "--eval-every", str(run.eval_every), "--prompt-length", str(run.prompt_length),
         "--batch-size", str(run.batch_size), "--lr", str(run.lr),
         "--eval-limit", str(run.eval_limit)],
        cwd=REPO, env=_env(), text=True, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert Store(store).prompts.manifest(prompt_id).world_size == 2
    return Store(store).prompts.tensor(prompt_id)


# A line of Python bytecode as `dis` prints it ("  160   2 LOAD_GLOBAL   0 (pa)"), after Ray's
# "(ActorName pid=N)" prefix.
DISASSEMBLY = re.compile(r"^(\(.*?\) )?\s*(\d+\s+)?\d+\s+[A-Z][A-Z_]{3,}\b")


def _assert_a_clean_job_log(log: str) -> None:
    """A Ray job's log as `ray job logs` gives it: every line once (the progress of a worker
    group from its rank 0 only; Ray's deduplication, which would fold lines and add its notice,
    off), no library output that was meant to be captured, and the group's lines in it."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in log.splitlines() if line.strip()]
    repeated = sorted({line for line in lines if lines.count(line) > 1})
    assert repeated == [], repeated
    assert "RAY_DEDUP_LOGS" not in log and "across cluster]" not in log
    assert [line for line in lines if DISASSEMBLY.match(line)] == []
    assert any("RayTrainWorker" in line for line in lines)  # the group's workers were heard


def _trial_processes(driver: subprocess.Popen) -> list[psutil.Process]:
    """The Tune trial processes of the local Ray that ``driver`` started (its descendants: a
    test running beside this one may have trials of its own)."""
    found = []
    for proc in psutil.Process(driver.pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            cmdline = proc.cmdline()
            if cmdline and cmdline[0].startswith("ray::ImplicitFunc"):
                found.append(proc)
    return found


def test_a_killed_worker_resumes_from_its_checkpoint_and_ends_like_an_uninterrupted_run(
        tmp_path, sentiment_dir):
    store = tmp_path / "store"
    spec = _write_spec(tmp_path / "killsweep.yaml", {"tiny-roberta": {"resources": {"cpus": 1}}},
                       store, sentiment_dir, steps=1200, max_failures=2)
    run = load_spec(spec).runs()[0].config
    log = tmp_path / "attempts.log"
    sweep = subprocess.Popen(
        [sys.executable, "-m", "ptdist", "sweep", "--spec", str(spec), "--json"], cwd=tmp_path,
        env=dict(_env(), **_attempt_log(log)), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def trained() -> bool:
            return any(map(has_trained_checkpoint, (store / "runs").glob("*")))

        deadline = time.time() + 300
        while not trained() and time.time() < deadline and sweep.poll() is None:
            time.sleep(0.2)
        assert trained(), "the run never wrote a checkpoint of a trained step"
        victims = _trial_processes(sweep)
        assert len(victims) == 1, victims
        victims[0].send_signal(signal.SIGKILL)
        out, err = sweep.communicate(timeout=600)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, err[-5000:]
    assert attempts(log) == {"prompt tiny-roberta/sst2/seed0/random": 2}  # retried once
    (reported,) = json.loads(out.strip().splitlines()[-1])["runs"]
    (row,) = _rows(store, "killsweep")
    assert reported == dataclasses.asdict(row)
    assert row.status == "resumed" and 0 < row.resumed_from < 1200, row

    reference = train(run, Store(tmp_path / "uninterrupted"))
    assert reference.prompt_id == row.prompt_id
    manifest = Store(store).prompts.manifest(row.prompt_id)
    torch.testing.assert_close(Store(store).prompts.tensor(row.prompt_id),
                               Store(tmp_path / "uninterrupted").prompts.tensor(row.prompt_id),
                               atol=1e-5, rtol=0)
    assert manifest.score == reference.score and manifest.best_step == reference.best_step


def _fake_autoscaling_config(path: Path, worker_cpus: int, max_workers: int) -> Path:
    """An autoscaler config for Ray's fake multi-node provider: "nodes" are extra raylets on
    this machine, launched and terminated by the real autoscaler. The head offers no CPU, so
    every run stays pending until the autoscaler adds a worker node."""
    config = {
        "cluster_name": "ptdist-fake", "max_workers": max_workers, "upscaling_speed": 1.0,
        "idle_timeout_minutes": 10,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "cpu_node": {"resources": {"CPU": worker_cpus}, "node_config": {},
                         "min_workers": 0, "max_workers": max_workers}},
        "head_node_type": "ray.head.default", "auth": {}, "docker": {},
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [],
        "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_an_autoscaling_cluster_adds_worker_nodes_for_pending_runs(tmp_path, sentiment_dir):
    store = tmp_path / "store"
    spec = _write_spec(tmp_path / "autosweep.yaml", {"tiny-roberta": {"resources": {"cpus": 1}}},
                       store, sentiment_dir, steps=20)
    spec_data = yaml.safe_load(spec.read_text())
    spec_data["seeds"] = [0, 1]
    spec.write_text(yaml.safe_dump(spec_data))
    config = _fake_autoscaling_config(tmp_path / "fake_cluster.yaml", worker_cpus=1,
                                      max_workers=2)
    env = dict(_env(), AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_FAKE_CLUSTER="1")
    port = 6379  # the fake provider's nodes join the GCS at Ray's default port
    workers = re.compile(r"\b\d+ cpu_node\b")
    with _ray_head(port, "--num-cpus=0", f"--autoscaling-config={config}",
                   "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}", env=env):
        status = _ray("status", f"--address=127.0.0.1:{port}")
        assert not workers.search(status.stdout), status.stdout  # nothing to run on yet
        sweep = _sweep(spec, tmp_path, "--address", f"127.0.0.1:{port}",  # not "auto": that
                       "--cluster", str(config))  # is the newest Ray on the machine
        assert sweep.returncode == 0, sweep.stdout[-5000:] + sweep.stderr[-5000:]
        status = _ray("status", f"--address=127.0.0.1:{port}")
        assert re.search(r"\b[12] cpu_node\b", status.stdout), status.stdout
    assert [r["status"] for r in _runs(sweep)] == ["trained", "trained"]
    assert [r.status for r in _rows(store, "autosweep")] == ["trained", "trained"]


def test_a_run_with_a_user_error_fails_once_and_the_rest_of_the_sweep_finishes(
        tmp_path, sentiment_dir):
    store = tmp_path / "store"
    spec = _write_spec(tmp_path / "errsweep.yaml", {"tiny-roberta": {"resources": {"cpus": 1}}},
                       store, sentiment_dir, steps=10)
    spec_data = yaml.safe_load(spec.read_text())
    spec_data["tasks"] = ["sst2", "imdb"]  # no local imdb data, and no hub access in tests
    spec.write_text(yaml.safe_dump(spec_data))
    log = tmp_path / "attempts.log"
    proc = _sweep(spec, tmp_path, **_attempt_log(log))
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    # The error names the failed run and what to do; the rows say what became of each.
    assert "1 run(s) failed: tiny-roberta/imdb/seed0 (could not load stanfordnlp/imdb" \
        in proc.stderr
    assert "run the same sweep again to retry only what is missing" in proc.stderr
    rows = {r["task"]: r for r in _runs(proc)}
    assert rows["sst2"]["status"] == "trained" and rows["imdb"]["status"] == "failed"
    assert rows["imdb"]["error"].startswith("could not load stanfordnlp/imdb")
    assert [r.status for r in _rows(store, "errsweep")] == ["trained", "failed"]
    # It would fail the same way again: one attempt, not retried.
    assert attempts(log) == {"prompt tiny-roberta/imdb/seed0/random": 1,
                             "prompt tiny-roberta/sst2/seed0/random": 1}
    assert Store(store).prompts.has(rows["sst2"]["prompt_id"])


@pytest.mark.parametrize("model,expected", [
    ({"tiny-roberta": {"resources": {"gpus": 1, "cpus": 1}}},
     "model tiny-roberta asks for 1 CPU, 1 GPU (1 worker): no node of this machine's local Ray "
     "can hold that"),
    # The case: each worker fits this 2-CPU machine, but the group (2 CPU on one node)
    # and the job that starts it (0.05 CPU) do not; it used to wait for ever.
    ({"tiny-t5-v1_1": {"resources": {"workers": 2, "cpus": 1}, "ds_config": "zero3"}},
     "model tiny-t5-v1_1 runs a worker group of 2 workers x 1 CPU, 0 GPU, which needs 2 CPU, "
     "0 GPU on one node, plus 0.05 CPU, 0 GPU for the job that starts it: no node of this "
     "machine's local Ray can hold that"),
], ids=["gpu", "group"])
def test_a_run_no_node_can_hold_is_refused_before_any_trial_starts(tmp_path, sentiment_dir,
                                                                    model, expected):
    store = tmp_path / "store"
    spec = _write_spec(tmp_path / "refused.yaml", model, store, sentiment_dir, steps=10)
    proc = _sweep(spec, tmp_path)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    [line] = proc.stderr.splitlines()  # the refusal, and nothing started before it
    assert expected in line
    assert not (store / "runs").exists()


# Last in the file: the module's Ray head and second Ray stay up until the module ends.
@pytest.fixture(scope="module")
def submitted(tmp_path_factory, sentiment_dir, another_ray, ray_head) -> dict:
    """A sweep submitted with `ray job submit` to a head, with another Ray on the machine: its
    spec, store, Ray records folder, the sweep's rows as the job left them (a re-submission
    rewrites the table), the job's log and the command that submitted it. The job's
    processes (Ray Train's controller and its placement-group cleaner among them) must keep to
    the cluster the job joined."""
    tmp = tmp_path_factory.mktemp("jobsweep")
    store, records = tmp / "store", tmp / "ray-records"
    zero3 = str(zero3_every_tensor_partitioned(tmp))
    spec = _write_spec(tmp / "jobsweep.yaml", {
        "tiny-roberta": {"resources": {"cpus": 1}},
        # Two processes in a Ray Train worker group, DeepSpeed ZeRO-3 over gloo, every
        # tensor of the model partitioned over the two workers.
        "tiny-t5-v1_1": {"resources": {"workers": 2, "cpus": 0.5}, "ds_config": zero3,
                         "train": {"steps": 10}},
    }, store, sentiment_dir, steps=30, max_failures=0, ray_storage=str(records))
    submit = ("job", "submit", "--address", ray_head, "--working-dir", str(REPO), "--",
              "python", "ray_jobs/sweep.py", "--spec", str(spec))
    first = _ray(*submit)
    job_id = re.search(r"Job '(raysubmit_\w+)' submitted", first.stdout).group(1)
    return {"spec": spec, "store": store, "records": records, "submit": submit,
            "rows": {r.model: r for r in _rows(store, "jobsweep")},
            "log": _ray("job", "logs", "--address", ray_head, job_id).stdout}


def test_a_submitted_sweep_trains_every_run_to_its_own_budget(submitted):
    rows = submitted["rows"]
    assert {r.status for r in rows.values()} == {"trained"}
    prompts = Store(submitted["store"]).prompts
    for row, steps in ((rows["tiny-roberta"], 30), (rows["tiny-t5-v1_1"], 10)):
        manifest = prompts.manifest(row.prompt_id)
        assert prompts.tensor(row.prompt_id).shape == (8, 64)
        assert manifest.score == row.score and manifest.steps == steps
    # Above chance: sst2 here is balanced (50 %); measured 84.4 % on the 64 evaluation rows
    # in one process (70.3 % before issue 26 drew the init from the seed and task; a binomial
    # p < 0.002 against 50 % then).
    assert rows["tiny-roberta"].score >= 65.0


def test_a_submitted_zero3_group_trains_on_two_workers(submitted):
    """The reproduction of a failure a 2-worker ZeRO-3 group under a sweep used to hit at
    model load (DeepSpeed's comm not set up on Ray Train's process group, so zero.Init saw
    world size 1 and refused the batch sizes)."""
    group = Store(submitted["store"]).prompts.manifest(submitted["rows"]["tiny-t5-v1_1"].prompt_id)
    assert group.world_size == 2 and group.zero_stage == 3


def test_a_submitted_sweep_keeps_rays_records_in_ray_storage(submitted):
    """Tune's and Train's records go to ray_storage (an S3 URI on a cluster); the store keeps
    only the mark the group left when it started."""
    store, records = submitted["store"], submitted["records"]
    assert any((records / "tune").iterdir()) and any((records / "train").iterdir())
    assert [p.suffix for p in (store / "ray" / "train").iterdir()] == [".started"]
    assert not (store / "ray" / "tune").exists()


def test_a_submitted_sweeps_job_log_has_each_line_once(submitted):
    _assert_a_clean_job_log(submitted["log"])


def test_a_resubmitted_sweep_runs_nothing(submitted):
    _ray(*submitted["submit"])
    assert {r.status for r in _rows(submitted["store"], "jobsweep")} == {"stored"}
    # Nothing ran: no second Tune experiment.
    assert len(list((submitted["records"] / "tune").iterdir())) == 1


def test_a_two_worker_zero3_group_computes_what_torchrun_computes(submitted, tmp_path,
                                                                    sentiment_dir):
    """The same global batches and reductions (measured: bit-identical; 1e-6 allowed)."""
    prompts = Store(submitted["store"]).prompts
    group = submitted["rows"]["tiny-t5-v1_1"].prompt_id
    torch.testing.assert_close(prompts.tensor(group),
                               _torchrun_prompt(tmp_path, submitted["spec"], "tiny-t5-v1_1",
                                                sentiment_dir, group), atol=1e-6, rtol=0)
