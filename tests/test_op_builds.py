"""No silent waits on DeepSpeed's op builds: a stale torch extension lock is named within
seconds, CPU runs build nothing, and each install has its own extensions cache."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import child_env

REPO = Path(__file__).resolve().parents[1]


def _stale_lock(root: Path, op: str) -> Path:
    """The lock a run killed while building ``op`` leaves: the file, and no builder."""
    lock = root / op / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    return lock


def _first_line_with(proc: subprocess.Popen, needle: str, within: float) -> tuple[str, float]:
    """The first stderr line holding ``needle`` and when it came (seconds since ``proc``
    started), reading until ``within`` seconds."""
    start = time.time()
    for line in proc.stderr:
        if needle in line:
            return line, time.time() - start
        assert time.time() - start < within, f"no '{needle}' within {within}s"
    raise AssertionError(f"stderr ended without '{needle}' (exit {proc.wait()})")


def test_a_stale_build_lock_is_named_at_once_and_a_cpu_run_does_not_wait_on_it(
        tmp_path, sentiment_dir):
    """The issue's repro: `touch $TORCH_EXTENSIONS_DIR/deepspeed_shm_comm/lock; ptdist train`
    waited for ever with nothing on stderr. Now the run names the lock and the command that
    removes it within seconds of starting, and finishes: on CPU DeepSpeed's comm op, the one it
    would build, is not needed (nothing is compiled into the cache)."""
    extensions = tmp_path / "extensions"
    lock = _stale_lock(extensions, "deepspeed_shm_comm")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ptdist", "train", "--model", "tiny-roberta", "--task", "sst2",
         "--steps", "2", "--prompt-length", "4", "--batch-size", "4", "--eval-every", "2",
         "--eval-limit", "8", "--data-dir", str(sentiment_dir), "--store",
         str(tmp_path / "store"), "--json"],
        cwd=REPO, env=child_env(TORCH_EXTENSIONS_DIR=str(extensions)), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line, after = _first_line_with(proc, "stale build lock", within=120)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0
    assert f"stale build lock {lock}:" in line and f"Remove it: rm {lock}" in line
    # measured: ~11 s on 2 busy cores, nearly all of it importing torch, transformers and
    # DeepSpeed; the check itself takes one second
    assert after < 60, after
    assert json.loads(out.splitlines()[-1])["steps_run"] == 2
    assert sorted(p.name for p in extensions.rglob("*")) == ["deepspeed_shm_comm", "lock"]


# A build that does wait on a lock: torch's own JIT loader, blocked by a stale lock, while the
# watch runs beside it (as it does around DeepSpeed's calls that may build).
WAITING_BUILD = """
import sys
from torch.utils.cpp_extension import load_inline
from ptdist.distributed.op_builds import watched_builds
with watched_builds():
    load_inline("ptdist_probe_op", cpp_sources="int one() { return 1; }", functions=["one"])
"""


def test_a_build_waiting_on_a_stale_lock_is_reported_while_it_waits(tmp_path):
    extensions = tmp_path / "extensions"
    lock = _stale_lock(extensions, "ptdist_probe_op")
    proc = subprocess.Popen([sys.executable, "-c", WAITING_BUILD], cwd=REPO, text=True,
                            env=child_env(TORCH_EXTENSIONS_DIR=str(extensions)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        line, after = _first_line_with(proc, "stale build lock", within=60)
    finally:
        proc.kill()
        proc.wait()
    assert f"rm {lock}" in line and after < 60


def test_each_install_gets_its_own_extensions_cache(tmp_path, monkeypatch):
    from ptdist.distributed.op_builds import EXTENSIONS, extensions_dir

    monkeypatch.setenv("PTDIST_CACHE", str(tmp_path))
    monkeypatch.delenv(EXTENSIONS, raising=False)
    first = extensions_dir("/opt/venvs/a")
    monkeypatch.delenv(EXTENSIONS)
    second = extensions_dir("/opt/venvs/b")
    assert first != second and first.is_relative_to(tmp_path / "torch_extensions")
    assert first.parent.name.startswith("a-") and second.parent.name.startswith("b-")
    monkeypatch.setenv(EXTENSIONS, str(tmp_path / "mine"))
    assert extensions_dir("/opt/venvs/a") == tmp_path / "mine"  # the user's choice stands
