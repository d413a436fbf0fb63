"""Failure rehearsal: faults injected at chosen points, to see what the failure policy
(`orchestration/execution/failures.py`) and the store's crash safety do there before a week-long
study depends on them.

Set ``PTDIST_FAULTS`` in the driver's environment (Ray passes it to every worker of a local Ray;
on a cluster give it in the job's runtime environment) to a JSON rule or list of rules:

    {"match": "prompt tiny-roberta/*", "fault": "error", "times": 2, "log": "/tmp/attempts"}

- ``match``: a shell pattern over sites, the points a process reaches:
  - a job's id, at the start of each attempt of it, and ``<job id>@worker``, in each worker of
    a job's Ray Train worker group;
  - ``write <path>``, when an atomic write (`store/atomic.py`) has written and fsync'd the temp
    file of ``<path>`` (absolute) and is about to rename it into place;
  - ``activations <model> part <k>``, before a capture's commit renames its k-th part file
    into view, and ``activations <model> commit``, before it writes the commit record
    (`store/activations.py`);
- ``fault``: ``error`` (raise a RuntimeError), ``user-error`` (raise a PtdistError),
  ``kill`` (the process kills itself with SIGKILL, as an out-of-memory kill would), or ``stop``
  (it stops itself with SIGSTOP, as a hung one would, until SIGCONT or SIGKILL);
- ``skip``: how many times each matching site is reached unharmed first (default 0);
- ``times``: how many times after those each matching site gets the fault (default: every
  time);
- ``after_s``: for ``kill`` and ``stop``, seconds after the site is reached (default 0: at
  once);
- ``log``: a file that gets one line each time a matching site is reached (``<site> <pid>``);
  the count is read from it, so it must be on a file system every worker sees, and a re-run
  with the same rules and log goes past the faults it already had.
"""

from __future__ import annotations

import fnmatch
import json
import os
import signal
import threading
from pathlib import Path

from ptdist.errors import PtdistError

ENV = "PTDIST_FAULTS"
SIGNALS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}


def reach(site: str) -> None:
    """Mark that this process reached ``site``; inject the fault a rule asks for there."""
    text = os.environ.get(ENV)
    if not text:
        return
    rules = json.loads(text)
    for rule in rules if isinstance(rules, list) else [rules]:
        if fnmatch.fnmatchcase(site, rule["match"]):
            _apply(rule, site, _record(rule, site))


def _record(rule: dict, site: str) -> int:
    """Append this visit to the rule's log; return how many visits of ``site`` it holds."""
    log = Path(rule["log"])
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"{site} {os.getpid()}\n")
    return sum(line.rsplit(" ", 1)[0] == site for line in log.read_text().splitlines())


def _apply(rule: dict, site: str, visit: int) -> None:
    skip = rule.get("skip", 0)
    if visit <= skip or visit > skip + rule.get("times", float("inf")):
        return
    fault = rule["fault"]
    if fault in SIGNALS:
        delay = float(rule.get("after_s", 0))
        if delay:
            threading.Timer(delay, os.kill, (os.getpid(), SIGNALS[fault])).start()
        else:
            os.kill(os.getpid(), SIGNALS[fault])
    elif fault == "error":
        raise RuntimeError(f"injected fault at {site} (attempt {visit}, {ENV})")
    elif fault == "user-error":
        raise PtdistError(f"injected user error at {site} ({ENV})")
    else:
        raise ValueError(f"{ENV}: unknown fault {fault!r}; use error, user-error, kill or stop")
