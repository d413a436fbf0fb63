"""Sweep progress through the driver's logger (and so in `ray job logs`): one line per event, with
the count of runs done / running / failed / pending and the best score so far per task. A trial
is a job of one run or a pack of runs; counts are of runs."""

from __future__ import annotations

import logging
import time

from ray.tune import Callback

log = logging.getLogger(__name__)


class SweepProgress(Callback):
    def __init__(self, name: str, total: int, attempts: int):
        self.name, self.total, self.attempts = name, total, attempts
        self.running: dict[str, int] = {}  # trial id -> runs in it
        self.done = 0
        self.failed = 0
        self.best: dict[str, tuple[float, str, str]] = {}  # task -> (score, metric, run label)
        self.t0 = time.time()

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running[trial.trial_id] = len(trial.config["job"]["runs"])
        self._line(f"start {_label(trial)}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._line(f"retry {_label(trial)} (attempt {trial.num_failures + 1} of "
                   f"{self.attempts}): it failed or its worker died; its runs resume from their "
                   "last checkpoints")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        labels = {run["prompt_id"]: run["label"] for run in trial.config["job"]["runs"]}
        for prompt_id, run in (result.get("runs") or {}).items():
            task, score, metric = run["task"], run["score"], run["metric"]
            if task not in self.best or score > self.best[task][0]:
                self.best[task] = (score, metric, labels[prompt_id])

    def on_trial_complete(self, iteration, trials, trial, **info):
        size = self.running.pop(trial.trial_id, 0)
        result = trial.last_result or {}
        if "error" in result:
            self.failed += size
            self._line(f"FAILED {_label(trial)}: {result['error']}")
            return
        self.done += size
        for run in (result.get("runs") or {}).values():
            resumed = run.get("resumed_from")
            self._line(f"done {run['model']}/{run['task']} {run['prompt_id']}: "
                       f"{run['metric']}={run['score']:.2f} in {run['wall_time_s']:.0f}s"
                       + (f" (resumed from step {resumed})" if resumed is not None else ""))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.failed += self.running.pop(trial.trial_id, 0)
        self._line(f"FAILED {_label(trial)} (retries exhausted); see its error below")

    def _line(self, event: str) -> None:
        running = sum(self.running.values())
        pending = self.total - self.done - self.failed - running
        best = "; ".join(f"{task} {metric} {score:.2f} ({label})"
                         for task, (score, metric, label) in sorted(self.best.items()))
        elapsed = time.time() - self.t0
        finished = self.done + self.failed
        eta = f", eta ~{elapsed / finished * (self.total - finished):.0f}s" \
            if finished and finished < self.total else ""
        log.info(f"[sweep {self.name} +{elapsed:.0f}s] {event} | "
                 f"{self.done}/{self.total} done, {running} running, "
                 f"{self.failed} failed, {pending} pending{eta}"
                 + (f" | best: {best}" if best else ""))


def _label(trial) -> str:
    return trial.config["job"]["label"]
