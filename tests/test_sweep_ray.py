"""Sweeps on real Ray: `ray job submit` to a local head, re-submission, a killed worker, and an
autoscaling (fake multi-node) cluster. Everything binds to loopback."""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from ptdist.orchestration.spec import load_spec
from ptdist.store import Store
from ptdist.store.results import SweepRow
from ptdist.store.tables import read_records
from ptdist.training import train
from tests.conftest import child_env, has_trained_checkpoint

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TRAIN = {"prompt_length": 8, "batch_size": 16, "lr": 0.1, "eval_limit": 64}

# Ray 2.5x+ authenticates clients with a token; each test session's clusters get their own.
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}

pytestmark = pytest.mark.slow


def _env() -> dict:
    return child_env(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
                     RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", **AUTH)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_spec(path: Path, models: dict, store: Path, data_dir: Path, steps: int,
                **extra) -> Path:
    spec = {"name": path.stem, "storage_path": str(store), "data_dir": str(data_dir),
            "tasks": ["sst2"], "seeds": [0], "train": dict(TRAIN, steps=steps, eval_every=10),
            "models": models, **extra}
    path.write_text(yaml.safe_dump(spec))
    return path


def _rows(store: Path, name: str) -> list[SweepRow]:
    return read_records(Store(store).layout.sweep_table(name), SweepRow)


def _ray(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "ray"), *args], env=_env(), text=True, capture_output=True,
                          timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture
def ray_head():
    """A Ray head started like a user would (`ray start --head`), on loopback only."""
    dashboard = _free_port()
    _ray("start", "--head", "--node-ip-address=127.0.0.1", f"--port={_free_port()}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=2",
         "--disable-usage-stats", timeout=180)
    try:
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        _ray("stop", "--force", timeout=180)


def test_ray_job_submit_runs_the_sweep_and_a_resubmission_runs_nothing(
        tmp_path, sentiment_dir, ray_head):
    store = tmp_path / "store"
    spec = _write_spec(tmp_path / "jobsweep.yaml", {
        "tiny-roberta": {"resources": {"cpus": 1}},
        # Two processes in a Ray Train worker group, DeepSpeed ZeRO-2 over gloo.
        "tiny-t5": {"resources": {"workers": 2, "cpus": 0.5}, "ds_config": "zero2"},
    }, store, sentiment_dir, steps=30)
    submit = ("job", "submit", "--address", ray_head, "--working-dir", str(REPO), "--",
              "python", "ray_jobs/sweep.py", "--spec", str(spec))

    first = _ray(*submit)
    assert "2 to run" in first.stdout
    assert "[sweep jobsweep" in first.stdout and "2/2 done" in first.stdout
    rows = {r.model: r for r in _rows(store, "jobsweep")}
    assert {r.status for r in rows.values()} == {"trained"}
    prompts = Store(store).prompts
    for row in rows.values():
        manifest = prompts.manifest(row.prompt_id)
        assert prompts.tensor(row.prompt_id).shape == (8, 64)
        assert manifest.score == row.score and manifest.steps == 30
    # Above chance: sst2 here is balanced (50 %); measured 70.3 % on the 64 evaluation rows
    # (a binomial p < 0.002 against 50 %), the same as the run in one process.
    assert rows["tiny-roberta"].score >= 65.0
    assert prompts.manifest(rows["tiny-t5"].prompt_id).world_size == 2

    job_id = re.search(r"Job '(raysubmit_\w+)' submitted", first.stdout).group(1)
    logs = _ray("job", "logs", "--address", ray_head, job_id)
    assert "[sweep jobsweep" in logs.stdout and "sweep jobsweep finished" in logs.stdout

    again = _ray(*submit)
    assert "0 to run" in again.stdout and "nothing new to run" in again.stdout
    assert "[sweep jobsweep" not in again.stdout
    assert {r.status for r in _rows(store, "jobsweep")} == {"stored"}

    # The two-worker Ray Train run computes what two processes under torchrun compute.
    t5 = load_spec(spec).runs()[1].config
    torchrun = subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "ptdist", "train",
         "--model", "tiny-t5", "--task", "sst2", "--data-dir", str(sentiment_dir), "--store",
         str(tmp_path / "torchrun"), "--ds-config", "zero2", "--steps", str(t5.steps),
         "--eval-every", str(t5.eval_every), "--prompt-length", str(t5.prompt_length),
         "--batch-size", str(t5.batch_size), "--lr", str(t5.lr),
         "--eval-limit", str(t5.eval_limit)],
        cwd=REPO, env=_env(), text=True, capture_output=True, timeout=300)
    assert torchrun.returncode == 0, torchrun.stderr[-3000:]
    pid = rows["tiny-t5"].prompt_id
    torch.testing.assert_close(prompts.tensor(pid),
                               Store(tmp_path / "torchrun").prompts.tensor(pid), atol=1e-6, rtol=0)


def _trial_processes() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and cmdline[0].startswith("ray::ImplicitFunc"):
            found.append(proc)
    return found


def test_a_killed_worker_resumes_from_its_checkpoint_and_ends_like_an_uninterrupted_run(
        tmp_path, sentiment_dir):
    store = tmp_path / "store"
    spec = _write_spec(tmp_path / "killsweep.yaml", {"tiny-roberta": {"resources": {"cpus": 1}}},
                       store, sentiment_dir, steps=1200, max_failures=2)
    run = load_spec(spec).runs()[0].config
    sweep = subprocess.Popen([sys.executable, "-m", "ptdist", "sweep", "--spec", str(spec)],
                             cwd=tmp_path, env=_env(), text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    try:
        def trained() -> bool:
            return any(map(has_trained_checkpoint, (store / "runs").glob("*")))

        deadline = time.time() + 300
        while not trained() and time.time() < deadline and sweep.poll() is None:
            time.sleep(0.2)
        assert trained(), "the run never wrote a checkpoint of a trained step"
        victims = _trial_processes()
        assert len(victims) == 1, victims
        victims[0].send_signal(signal.SIGKILL)
        out, _ = sweep.communicate(timeout=600)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, out[-5000:]
    assert "retry tiny-roberta/sst2/seed0/random" in out
    (row,) = _rows(store, "killsweep")
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
    start = subprocess.run(
        [str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=0",
         f"--autoscaling-config={config}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={_free_port()}", "--disable-usage-stats"],
        env=env, text=True, capture_output=True, timeout=180)
    assert start.returncode == 0, start.stderr[-3000:]
    try:
        sweep = subprocess.run(
            [sys.executable, "-m", "ptdist", "sweep", "--spec", str(spec), "--address", "auto",
             "--cluster", str(config)],
            cwd=tmp_path, env=_env(), text=True, capture_output=True, timeout=600)
        assert sweep.returncode == 0, sweep.stdout[-5000:] + sweep.stderr[-5000:]
        assert "cluster resources: 0 CPU" in sweep.stderr  # nothing to run on at submission
        assert "2/2 done" in sweep.stderr
        status = _ray("status", f"--address=127.0.0.1:{port}")
        assert re.search(r"\b[12] cpu_node\b", status.stdout), status.stdout
    finally:
        _ray("stop", "--force", timeout=180)
    assert [r.status for r in _rows(store, "autosweep")] == ["trained", "trained"]


def test_a_run_with_a_user_error_fails_once_and_the_rest_of_the_sweep_finishes(
        tmp_path, sentiment_dir):
    store = tmp_path / "store"
    spec = _write_spec(tmp_path / "errsweep.yaml", {"tiny-roberta": {"resources": {"cpus": 1}}},
                       store, sentiment_dir, steps=10)
    spec_data = yaml.safe_load(spec.read_text())
    spec_data["tasks"] = ["sst2", "imdb"]  # no local imdb data, and no hub access in tests
    spec.write_text(yaml.safe_dump(spec_data))
    proc = subprocess.run([sys.executable, "-m", "ptdist", "sweep", "--spec", str(spec)],
                          cwd=tmp_path, env=_env(), text=True, capture_output=True, timeout=600)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FAILED tiny-roberta/imdb/seed0/random: could not load stanfordnlp/imdb" in proc.stderr
    assert "retry tiny-roberta/imdb" not in proc.stderr  # it would recur: not retried
    assert "1 run(s) failed: tiny-roberta/imdb/seed0 (could not load" in proc.stderr
    assert "run the same sweep again to retry only what is missing" in proc.stderr
    rows = {r.task: r for r in _rows(store, "errsweep")}
    assert rows["sst2"].status == "trained" and rows["imdb"].status == "failed"
    assert Store(store).prompts.has(rows["sst2"].prompt_id)


def test_a_run_no_node_can_hold_is_refused_before_any_trial_starts(tmp_path, sentiment_dir):
    store = tmp_path / "store"
    spec = _write_spec(tmp_path / "gpusweep.yaml",
                       {"tiny-roberta": {"resources": {"gpus": 1, "cpus": 1}}},
                       store, sentiment_dir, steps=10)
    proc = subprocess.run([sys.executable, "-m", "ptdist", "sweep", "--spec", str(spec)],
                          cwd=tmp_path, env=_env(), text=True, capture_output=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "model tiny-roberta asks for 1 CPU, 1 GPU per worker (1 worker(s)), more than any " \
           "node of this machine's local Ray offers" in proc.stderr
    assert "[sweep" not in proc.stderr and not (store / "runs").exists()
