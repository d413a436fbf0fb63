"""Failure rehearsal: faults injected into chosen jobs, to see the failure policy
(`failures.py`) act on a real cluster before a week-long study depends on it.

Set ``PTDIST_FAULTS`` in the driver's environment (Ray passes it to every worker of a local Ray;
on a cluster give it in the job's runtime environment) to a JSON rule or list of rules:

    {"match": "prompt tiny-roberta/*", "fault": "error", "times": 2, "log": "/tmp/attempts"}

- ``match``: a shell pattern over attempt sites: a job's id (at the start of each attempt of
  it) and ``<job id>@worker`` (in each worker of a job's Ray Train worker group);
- ``fault``: ``error`` (raise a RuntimeError), ``user-error`` (raise a PtdistError), or
  ``kill`` (the worker process kills itself, as an out-of-memory kill would);
- ``times``: how many attempts of each matching site get the fault (default: every one);
- ``after_s``: for ``kill``, seconds into the attempt (default 0: at its start);
- ``log``: a file that gets one line per attempt of a matching site (``<site> <pid>``); the
  attempt count is read from it, so it must be on a file system every worker sees.
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


def begin_attempt(site: str) -> None:
    """Mark the start of an attempt at ``site``; inject the fault a rule asks for there."""
    text = os.environ.get(ENV)
    if not text:
        return
    rules = json.loads(text)
    for rule in rules if isinstance(rules, list) else [rules]:
        if fnmatch.fnmatchcase(site, rule["match"]):
            _apply(rule, site, _record(rule, site))


def _record(rule: dict, site: str) -> int:
    """Append this attempt to the rule's log; return how many attempts of ``site`` it holds."""
    log = Path(rule["log"])
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"{site} {os.getpid()}\n")
    return sum(line.rsplit(" ", 1)[0] == site for line in log.read_text().splitlines())


def _apply(rule: dict, site: str, attempt: int) -> None:
    if attempt > rule.get("times", float("inf")):
        return
    fault = rule["fault"]
    if fault == "kill":
        delay = float(rule.get("after_s", 0))
        if delay:
            threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL)).start()
        else:
            os.kill(os.getpid(), signal.SIGKILL)
    elif fault == "error":
        raise RuntimeError(f"injected fault at {site} (attempt {attempt}, {ENV})")
    elif fault == "user-error":
        raise PtdistError(f"injected user error at {site} ({ENV})")
    else:
        raise ValueError(f"{ENV}: unknown fault {fault!r}; use error, user-error or kill")
