"""The one progress line of both schedulers (`graph.progress_line`): the job graph's and Ray
Tune's sweep callback (`tune_progress.SweepProgress`) say where they stand in the same fields, read
back here as numbers rather than compared as wording."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import pytest

from ptdist.orchestration.execution.graph import Tally, progress_line

FIELDS = re.compile(r"^(?P<event>.*) \[(?P<done>\d+)/(?P<total>\d+) done, (?P<running>\d+) "
                    r"running, (?P<failed>\d+) failed, (?P<waiting>\d+) waiting, "
                    r"(?P<elapsed>\d+)s(, eta ~(?P<eta>\d+)s)?\]( \| (?P<note>.*))?$")


def progress_fields(line: str) -> dict:
    """A progress line's fields: its event, note, and counts, elapsed and eta (None: none)."""
    match = FIELDS.match(line)
    assert match, line
    return {k: v if k in ("event", "note") or v is None else int(v)
            for k, v in match.groupdict().items()}


def test_a_progress_line_carries_the_counts_elapsed_time_and_estimate():
    tally = Tally(total=10, done=4, running=2, failed=1, executed=3, elapsed_s=30.0)
    assert progress_fields(progress_line("done x", tally, "best: sst2 90")) == dict(
        event="done x", done=4, total=10, running=2, failed=1, waiting=3, elapsed=30,
        eta=50, note="best: sst2 90")  # 30 s for 3 finished here; 2 running + 3 waiting left
    stored = Tally(total=4, done=4, running=0, failed=0, executed=0, elapsed_s=0.2)
    assert progress_fields(progress_line("done y", stored)) | {"event": None} == dict(
        event=None, done=4, total=4, running=0, failed=0, waiting=0, elapsed=0, eta=None,
        note=None)


def _trial(trial_id: str, runs: list[dict], result: dict | None = None):
    """What `SweepProgress` reads of a Tune trial: its id, its job's runs, its last result."""
    job = {"label": f"job {trial_id}", "runs": [{"prompt_id": r["prompt_id"], "label": r["label"]}
                                                for r in runs]}
    return SimpleNamespace(trial_id=trial_id, config={"job": job}, last_result=result,
                           num_failures=0)


def test_a_sweep_on_tune_says_where_it_stands_in_the_graphs_fields(caplog):
    pytest.importorskip("ray.tune")
    from ptdist.orchestration.execution.tune_progress import SweepProgress

    runs = [dict(prompt_id=f"p{i}", label=f"m/sst2/seed{i}/random", model="m", task="sst2",
                 metric="accuracy", score=float(80 + i), wall_time_s=1.0) for i in range(3)]
    progress = SweepProgress(total=3, attempts=1)
    pack, alone = _trial("a", runs[:2]), _trial("b", runs[2:])
    with caplog.at_level(logging.INFO, logger="ptdist.orchestration.execution.tune_progress"):
        progress.on_trial_start(0, [], pack)
        progress.on_trial_start(0, [], alone)
        result = {"runs": {r["prompt_id"]: r for r in runs[:2]}}
        progress.on_trial_result(0, [], pack, result)
        pack.last_result = result
        progress.on_trial_complete(0, [], pack)
        alone.last_result = {"error": "could not load the data"}
        progress.on_trial_complete(0, [], alone)
    finished = [progress_fields(r.getMessage()) for r in caplog.records
                if not r.getMessage().startswith("start ")]
    assert [(f["done"], f["running"], f["failed"], f["waiting"], f["total"])
            for f in finished] == [(2, 1, 0, 0, 3), (2, 1, 0, 0, 3), (2, 0, 1, 0, 3)]
    assert all(f["note"] == "best: sst2 accuracy 81.00 (m/sst2/seed1/random)" for f in finished)
    assert finished[-1]["eta"] is None  # nothing left
