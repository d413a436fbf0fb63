"""Sweep progress on the driver's stdout (and so in `ray job logs`): one line per event, with
the count of runs done / running / failed / pending and the best score so far per task."""

from __future__ import annotations

import sys
import time

from ray.tune import Callback


class SweepProgress(Callback):
    def __init__(self, name: str, total: int):
        self.name, self.total = name, total
        self.running: set[str] = set()
        self.done: list[str] = []
        self.failed: list[str] = []
        self.best: dict[str, tuple[float, str, str]] = {}  # task -> (score, metric, run label)
        self.t0 = time.time()

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        self._line(f"start {_label(trial)}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._line(f"retry {_label(trial)}: its worker failed; it resumes from its last "
                   "checkpoint")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "score" not in result:
            return
        task, score, metric = result["task"], result["score"], result["metric"]
        if task not in self.best or score > self.best[task][0]:
            self.best[task] = (score, metric, _label(trial))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        result = trial.last_result or {}
        if "error" in result:
            self.failed.append(trial.trial_id)
            self._line(f"FAILED {_label(trial)}: {result['error']}")
            return
        self.done.append(trial.trial_id)
        resumed = result.get("resumed_from")
        self._line(f"done {_label(trial)}: {result.get('metric')}={result.get('score', 0):.2f} "
                   f"in {result.get('wall_time_s', 0):.0f}s"
                   + (f" (resumed from step {resumed})" if resumed is not None else ""))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.failed.append(trial.trial_id)
        self._line(f"FAILED {_label(trial)} (retries exhausted); see its error below")

    def _line(self, event: str) -> None:
        finished = len(self.done) + len(self.failed)
        pending = self.total - finished - len(self.running)
        best = "; ".join(f"{task} {metric} {score:.2f} ({label})"
                         for task, (score, metric, label) in sorted(self.best.items()))
        print(f"[sweep {self.name} +{time.time() - self.t0:.0f}s] {event} | "
              f"{len(self.done)}/{self.total} done, {len(self.running)} running, "
              f"{len(self.failed)} failed, {pending} pending"
              + (f" | best: {best}" if best else ""), file=sys.stdout, flush=True)


def _label(trial) -> str:
    return trial.config["run"]["label"]
