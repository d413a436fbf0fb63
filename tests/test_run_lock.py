"""One run at a time writes into a store: a `sweep` or `replicate` started while another runs
into the same store refuses with one line naming the other; a killed holder blocks nothing; and
where flock does not reach, the holder's record decides (a live pid on this host, a fresh
heartbeat from another)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ptdist.errors import PtdistError
from ptdist.store.layout import StoreLayout
from ptdist.store import run_lock as lock_module
from ptdist.store.run_lock import run_lock
from tests.conftest import child_env

SPEC = """name: locked
storage_path: {store}
data_dir: {data}
tasks: [sst2]
train: {{steps: 20, eval_every: 10, prompt_length: 4, batch_size: 16, lr: 0.1, eval_limit: 32}}
models:
  tiny-roberta: {{}}
"""


def _ptdist(spec: Path, command: str, **kwargs) -> subprocess.Popen:
    flag = "--study" if command == "replicate" else "--spec"
    return subprocess.Popen([sys.executable, "-m", "ptdist", command, flag, str(spec), "--local",
                             "--json"],
                            cwd=spec.parent, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kwargs)


@pytest.mark.slow
def test_a_second_run_into_a_store_refuses_naming_the_first_and_a_killed_one_blocks_nothing(
        tmp_path, sentiment_dir):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(store=tmp_path / "store", data=sentiment_dir))
    # The first run stops itself (PTDIST_FAULTS) as its first job starts, holding the store.
    stop = {"match": "prompt tiny-roberta/*", "fault": "stop", "times": 1,
            "log": str(tmp_path / "faults.log")}
    first = _ptdist(spec, "replicate", env=child_env(PTDIST_FAULTS=json.dumps(stop)))
    deadline = time.time() + 300
    while psutil.Process(first.pid).status() != psutil.STATUS_STOPPED:
        assert first.poll() is None and time.time() < deadline, first.stderr.read()[-3000:]
        time.sleep(0.2)
    try:
        for command in ("sweep", "replicate"):
            second = _ptdist(spec, command, env=child_env())
            out, err = second.communicate(timeout=300)
            assert second.returncode == 2, err[-3000:]
            [line] = [line for line in err.splitlines() if line.startswith("ptdist: error:")]
            assert line.startswith(f"ptdist: error: store {tmp_path / 'store'} is in use by "
                                   f"another ptdist run: pid {first.pid} on host "
                                   f"{socket.gethostname()}, `ptdist replicate --study {spec} "
                                   "--local --json`, since "), line
            assert re.search(r"since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line), line
            assert "Traceback" not in err and "loaded tiny-roberta" not in err
    finally:
        first.kill()  # a holder killed while it holds the store
        first.communicate(timeout=60)

    after = _ptdist(spec, "sweep", env=child_env())
    out, err = after.communicate(timeout=600)
    assert after.returncode == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["trained"] == 1


def _holder(layout: StoreLayout) -> dict:
    """The record in the store's run lock, read again while its holder rewrites it."""
    for _ in range(100):
        try:
            return json.loads(layout.run_lock().read_text())
        except ValueError:
            time.sleep(0.01)
    raise AssertionError(f"no record in {layout.run_lock()}: {layout.run_lock().read_text()!r}")


def _record(layout: StoreLayout, **holder) -> None:
    """A holder's record as a run whose flock does not reach here leaves it."""
    layout.run_lock().parent.mkdir(parents=True, exist_ok=True)
    layout.run_lock().write_text(json.dumps({"command": "ptdist sweep --spec other.yaml",
                                             **holder}))


def test_without_flock_a_live_holder_on_this_host_is_refused_and_a_dead_one_taken_over(
        tmp_path):
    layout = StoreLayout(tmp_path / "store")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        since = psutil.Process(holder.pid).create_time() + 0.5
        _record(layout, pid=holder.pid, host=socket.gethostname(), since=since,
                heartbeat=since)
        with pytest.raises(PtdistError, match=f"pid {holder.pid} on host "
                                              f"{socket.gethostname()}, `ptdist sweep --spec "
                                              "other.yaml`"):
            with run_lock(layout):
                pass
        # A process started after the record was written only reuses the pid: not the holder.
        _record(layout, pid=holder.pid, host=socket.gethostname(), since=since - 60,
                heartbeat=since)
        with run_lock(layout):
            assert _holder(layout)["pid"] == os.getpid()
    finally:
        holder.kill()
        holder.wait()
    _record(layout, pid=holder.pid, host=socket.gethostname(), since=since, heartbeat=since)
    with run_lock(layout):  # its pid is dead
        assert _holder(layout)["pid"] == os.getpid()
    assert layout.run_lock().read_text() == ""  # released


def test_without_flock_a_holder_on_another_host_counts_while_its_heartbeat_is_fresh(
        tmp_path, monkeypatch):
    layout = StoreLayout(tmp_path / "store")
    now = time.time()
    _record(layout, pid=1, host="another-node", since=now - 3600, heartbeat=now - 5)
    with pytest.raises(PtdistError, match="pid 1 on host another-node"):
        with run_lock(layout):
            pass
    _record(layout, pid=1, host="another-node", since=now - 3600,
            heartbeat=now - lock_module.LEASE_S - 1)
    monkeypatch.setattr(lock_module, "HEARTBEAT_S", 0.05)
    with run_lock(layout):
        first = _holder(layout)
        assert first["pid"] == os.getpid()
        time.sleep(0.5)
        assert _holder(layout)["heartbeat"] > first["heartbeat"]


def test_a_run_nested_in_another_of_the_same_process_shares_its_hold(tmp_path):
    layout = StoreLayout(tmp_path / "store")
    with run_lock(layout):
        with run_lock(layout):
            pass
        assert _holder(layout)["pid"] == os.getpid()
    child = subprocess.run([sys.executable, "-c",
                            "from pathlib import Path\n"
                            "from ptdist.store.layout import StoreLayout\n"
                            "from ptdist.store.run_lock import run_lock\n"
                            f"with run_lock(StoreLayout(Path({str(layout.root)!r}))): "
                            "print('held')"],
                           env=child_env(), text=True, capture_output=True, timeout=120)
    assert child.stdout == "held\n", child.stderr
