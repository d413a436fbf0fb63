"""One run at a time writes into a store: `ptdist sweep` and `ptdist replicate` hold the store's
run lock for as long as they run, and a second one refuses to start, naming the first (its pid,
host, command and since when). Two runs into one store would train the same runs side by side,
each resuming from and overwriting the other's checkpoints.

The lock is ``run.lock`` at the store root: an exclusive ``flock`` held for the run's length,
which the kernel releases when the process ends, however it ends (SIGKILL, out of memory), and
in it a JSON record of its holder. Where ``flock`` does not reach (a file system that has no
locks, or whose locks do not span hosts, such as NFS mounted with ``local_lock=flock``), the
record decides:

- a holder on this host counts while its process lives (its pid, started when the record says);
- a holder on another host counts while its heartbeat is fresh: it rewrites the record every
  `HEARTBEAT_S`, and a record not rewritten for `LEASE_S` is a dead holder's (a killed process,
  a lost node). A killed holder therefore keeps the store for at most `LEASE_S`; one whose
  clock is more than that off this host's looks dead or alive for ever, so keep the hosts of a
  cluster on NTP, as Ray needs anyway.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ptdist.errors import PtdistError
from ptdist.store.layout import StoreLayout

HEARTBEAT_S = 20.0
LEASE_S = 90.0
_held: dict[Path, int] = {}  # lock files this process holds, with how many holders nest


@contextmanager
def run_lock(layout: StoreLayout) -> Iterator[None]:
    """Hold the store's run lock for the length of the block (nested holds in one process
    share it); refuse with a `PtdistError` naming the holder when another run has it."""
    path = layout.run_lock()
    if path in _held:
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    handle = _open(path)
    try:
        _acquire(handle, path)
        _held[path] = 1
        beating = threading.Event()
        heart = threading.Thread(target=_beat, args=(handle, beating), daemon=True)
        heart.start()
        try:
            yield
        finally:
            beating.set()
            heart.join()
            del _held[path]
            handle.seek(0)
            handle.truncate()
    finally:
        handle.close()  # releases the flock


def _open(path: Path):
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(os.open(path, os.O_RDWR | os.O_CREAT, 0o666), "r+", encoding="utf-8")
    except OSError as exc:
        raise PtdistError(f"cannot open the run lock {path} of the store: {exc.strerror}; "
                          "give --store a folder this user can write") from None


def _acquire(handle, path: Path) -> None:
    """Take the flock and write this run's record, or raise naming the run that holds it."""
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(path, _read(handle, retry=True)) from None
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
    holder = _read(handle)
    if holder is not None and _alive(holder):
        raise _in_use(path, holder)
    now = time.time()
    _write(handle, {"pid": os.getpid(), "host": socket.gethostname(), "command": _command(),
                    "since": now, "heartbeat": now})


def _beat(handle, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        record = _read(handle)
        if record is not None:
            _write(handle, {**record, "heartbeat": time.time()})


def _read(handle, retry: bool = False) -> dict | None:
    """The holder's record; None when there is none. A record being rewritten at this moment
    is read again (for up to a second, with ``retry``)."""
    for _ in range(10 if retry else 1):
        handle.seek(0)
        text = handle.read()
        try:
            record = json.loads(text) if text.strip() else None
            if record is None or {"pid", "host", "command", "since", "heartbeat"} <= set(record):
                return record
        except ValueError:
            pass
        if retry:
            time.sleep(0.1)
    return None


def _write(handle, record: dict) -> None:
    """Rewrite the record in place (the flock is on this file: it is never replaced), written
    over the old one before the rest is cut, so the file is never empty meanwhile."""
    handle.seek(0)
    handle.write(json.dumps(record) + "\n")
    handle.truncate()
    handle.flush()
    os.fsync(handle.fileno())


def _alive(holder: dict) -> bool:
    """Whether the run a record names may still run, when no flock says so."""
    if holder["host"] != socket.gethostname():
        return time.time() - holder["heartbeat"] < LEASE_S
    import psutil

    try:
        started = psutil.Process(holder["pid"]).create_time()
    except psutil.NoSuchProcess:
        return False
    return holder["pid"] != os.getpid() and started <= holder["since"] + 1


def _command() -> str:
    """This process's command line, as the user typed it (``ptdist ...`` for the CLI)."""
    program = sys.argv[0] if sys.argv else "python"
    if Path(program).name in ("__main__.py", "ptdist"):
        program = "ptdist"
    return shlex.join([program, *sys.argv[1:]])


def _in_use(path: Path, holder: dict | None) -> PtdistError:
    where = path.parent
    if holder is None:
        return PtdistError(f"store {where} is in use by another ptdist run (its lock {path} is "
                           "held; the run's record is not written yet). Wait for it to finish, "
                           "or give this run another --store")
    since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(holder["since"]))
    return PtdistError(f"store {where} is in use by another ptdist run: pid {holder['pid']} on "
                       f"host {holder['host']}, `{holder['command']}`, since {since}. Wait for "
                       "it to finish (it holds the store until it ends), or give this run "
                       "another --store")
