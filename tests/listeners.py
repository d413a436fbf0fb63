"""The suite's own processes stay off the network: a watch over the TCP sockets that this test
process and the processes it started (its Rays, CLI runs and their Rays, Ray Train workers)
listen on, naming each one bound beyond loopback. conftest runs it for the whole session and
fails the test during which one was seen.

A launcher's process tree (torchrun, the DeepSpeed launcher) is left out: its rendezvous store
listens on every interface by torch's design, and under a launcher it is the user's
(docs/reliability.md).

Linux only, as the suite: a sample reads the kernel's TCP tables once (``/proc/net/tcp`` and
``tcp6``), and only when a socket listens beyond loopback somewhere on the machine does it look
for its inode among the file descriptors of this process tree.
"""

from __future__ import annotations

import ipaddress
import os
import threading

import psutil

LAUNCHERS = ("torch.distributed.run", "torchrun", "deepspeed.launcher", "bin/deepspeed")
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column


def beyond_loopback(root: int, allowed: set[int] = frozenset()) -> list[str]:
    """``"<name> (pid N) listens on IP:PORT"`` for each TCP socket that the process ``root`` or
    one it started (launchers' trees and ``allowed`` pids left out) listens on beyond loopback."""
    sockets = _listening_beyond_loopback()
    if not sockets:
        return []
    found = []
    for pid in _tree(root) - set(allowed):
        try:
            inodes = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
            found += [f"{psutil.Process(pid).name()} (pid {pid}) listens on {address}"
                      for inode, address in sockets.items() if f"socket:[{inode}]" in inodes]
        except (OSError, psutil.Error):  # ended meanwhile
            pass
    return found


def _listening_beyond_loopback() -> dict[str, str]:
    """``{socket inode: "IP:PORT"}`` of every listening TCP socket of this network namespace
    that is not bound to a loopback address."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] != _LISTEN:
                    continue
                address, port = fields[1].split(":")
                ip = _ip(address)
                mapped = getattr(ip, "ipv4_mapped", None)
                if not (ip.is_loopback or (mapped is not None and mapped.is_loopback)):
                    found[fields[9]] = f"{ip}:{int(port, 16)}"
    return found


def _ip(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as the kernel's tables write it: 32-bit words in host (little-endian)
    order."""
    raw = bytes.fromhex(hex_address)
    return ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))


def _tree(root: int) -> set[int]:
    """``root`` and its descendants, but no launcher nor what a launcher started."""
    children: dict[int, list[int]] = {}
    for proc in psutil.process_iter(["ppid"]):
        children.setdefault(proc.info["ppid"], []).append(proc.pid)
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        try:
            if any(name in " ".join(psutil.Process(pid).cmdline()) for name in LAUNCHERS):
                continue
        except psutil.Error:
            continue
        tree.add(pid)
        todo += children.get(pid, [])
    return tree


class ListenerWatch:
    """Samples `beyond_loopback` of this process's tree every ``interval`` seconds in a thread,
    and keeps what it finds for the test running at the time (`begin`, `end`)."""

    def __init__(self, interval: float = 1.0):
        self.interval, self.allowed = interval, set()
        self._test: str | None = None
        self._found: dict[str | None, list[str]] = {}
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "ListenerWatch":
        self._thread.start()
        return self

    def stop(self) -> list[str]:
        """Stop watching; what was seen outside any test."""
        self._stop.set()
        self._thread.join()
        return self._found.get(None, [])

    def begin(self, test: str) -> None:
        with self._lock:
            self._test = test

    def end(self) -> list[str]:
        """What was seen beyond loopback while the test ran (one last sample included)."""
        self.sample()
        with self._lock:
            test, self._test = self._test, None
            return self._found.pop(test, [])

    def allow(self, pid: int) -> None:
        """Leave the process ``pid`` out (a test that opens such a socket on purpose)."""
        self.allowed.add(pid)

    def sample(self) -> None:
        seen = beyond_loopback(os.getpid(), self.allowed)
        with self._lock:
            found = self._found.setdefault(self._test, [])
            found += [line for line in seen if line not in found]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()
