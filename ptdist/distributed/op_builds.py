"""DeepSpeed's just-in-time built C++ ops: one cache per install, no build where none is needed,
and never a silent wait.

torch builds an extension in ``$TORCH_EXTENSIONS_DIR/<op>/`` under a ``lock`` file, and every
other process that needs the op waits until that file is gone, without a word and for ever if
the builder was killed.

- When TORCH_EXTENSIONS_DIR is unset, each install (Python prefix) gets its own cache under
  ptdist's cache folder, so two virtual environments never wait on (or rebuild over) each
  other's builds.
- On CPU, DeepSpeed builds its shared-memory comm op when its comm backend starts (at process
  group start, or in deepspeed.initialize when Ray Train made the group). It serves
  only ``inference_all_reduce`` (tensor-parallel inference), which ptdist never calls, so ptdist
  marks it unavailable: no compiler needed, no first-run build, no lock.
- Around the calls that may build an op (`watched_builds`), a stale lock (no process on this
  machine works in its folder) is reported at once with the path to remove, and a running
  build is reported after 5 seconds and then every 30.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ptdist.runtime import cache_root

log = logging.getLogger(__name__)

EXTENSIONS = "TORCH_EXTENSIONS_DIR"
CPU_COMM_OP = "deepspeed_shm_comm"
CHECK_EVERY_S, FIRST_BUILDING_S, BUILDING_EVERY_S = 1.0, 5.0, 30.0
_REPORTED: set[tuple[Path, tuple[int, int]]] = set()  # stale locks named, once per process


def extensions_dir(prefix: str | None = None) -> Path:
    """The torch extensions cache of this run: $TORCH_EXTENSIONS_DIR, or (set now) one folder
    per install ``prefix`` (default: this interpreter's) and torch build."""
    if os.environ.get(EXTENSIONS):
        return Path(os.environ[EXTENSIONS])
    import torch

    prefix = prefix or sys.prefix
    digest = hashlib.sha256(prefix.encode()).hexdigest()[:12]
    build = f"py{sys.version_info.major}{sys.version_info.minor}_" + (
        f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu")
    folder = cache_root() / "torch_extensions" / f"{Path(prefix).name}-{digest}" / build
    os.environ[EXTENSIONS] = str(folder)
    return folder


def skip_unused_cpu_op() -> None:
    """Mark DeepSpeed's CPU shared-memory comm op unavailable (see the module docstring)."""
    import torch

    if torch.cuda.is_available():
        return
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__[CPU_COMM_OP] = False


def _building(folder: Path) -> bool:
    """Whether a process on this machine works in ``folder`` (torch runs ninja and the
    compiler there)."""
    import psutil

    for proc in psutil.process_iter(["cwd"]):
        cwd = proc.info.get("cwd")
        if cwd and Path(cwd) == folder:
            return True
    return False


def _locks(root: Path) -> dict[Path, tuple[int, int]]:
    """Every build lock under ``root``, with its identity (inode, mtime)."""
    found = {}
    for lock in root.glob("*/lock"):
        try:
            stat = lock.stat()
        except FileNotFoundError:
            continue
        found[lock] = (stat.st_ino, stat.st_mtime_ns)
    return found


class BuildWatch:
    """Reports stale build locks and running builds under the extensions cache ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self.seen: dict[Path, tuple[int, int]] = {}  # locks with no builder at the last look
        self.started: dict[Path, float] = {}
        self.told: dict[Path, float] = {}

    def look(self) -> None:
        """One look: a lock found without a builder twice in a row (the same file) is stale."""
        locks = _locks(self.root)
        idle = {}
        for lock, identity in locks.items():
            if _building(lock.parent):
                self._building(lock)
            else:
                idle[lock] = identity
                if self.seen.get(lock) == identity and (lock, identity) not in _REPORTED:
                    _REPORTED.add((lock, identity))
                    log.warning(f"stale build lock {lock}: no process on this machine is "
                                f"building DeepSpeed's {lock.parent.name} op (a run killed "
                                "while building it leaves this file), and any run that needs "
                                f"the op waits for the file to go, for ever. Remove it: rm {lock}")
        self.seen = idle

    def unnamed(self) -> bool:
        """Whether the last look found a lock without a builder that is not named yet."""
        return any((lock, identity) not in _REPORTED for lock, identity in self.seen.items())

    def _building(self, lock: Path) -> None:
        now = time.time()
        start = self.started.setdefault(lock, now)
        told = self.told.get(lock)
        if now - start >= FIRST_BUILDING_S and (told is None or now - told >= BUILDING_EVERY_S):
            self.told[lock] = now
            log.info(f"[ptdist] DeepSpeed is building its {lock.parent.name} op in "
                     f"{lock.parent} ({now - start:.0f}s so far): the first use on this install "
                     "compiles it once, usually in a minute or two; later runs load it")


@contextmanager
def watched_builds() -> Iterator[None]:
    """Watch the extensions cache for the length of the block (which may build an op): a
    stale lock is named within about two seconds, a running build after 5 seconds and then
    every 30."""
    watch = BuildWatch(extensions_dir())
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(CHECK_EVERY_S):
            watch.look()

    watch.look()
    if watch.unnamed():  # a lock nobody builds under: look again now, so a stale one is
        time.sleep(CHECK_EVERY_S)  # named even if the block ends before the next look
        watch.look()
    thread = threading.Thread(target=run, name="ptdist-build-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=CHECK_EVERY_S * 2)
