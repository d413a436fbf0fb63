"""Sweep progress on Ray Tune through the driver's logger (and so in `ray job logs`): one line
per event, in the shape of the job graph's (`graph.progress_line`), with the best score so far
per task as its note. A trial is a job of one run or a pack of runs; counts are of runs."""

from __future__ import annotations

import logging
import time

from ray.tune import Callback

from ptdist.orchestration.execution.graph import Tally, progress_line

log = logging.getLogger(__name__)


class SweepProgress(Callback):
    def __init__(self, total: int, attempts: int):
        self.total, self.attempts = total, attempts
        self.running: dict[str, int] = {}  # trial id -> runs in it
        self.done = 0
        self.failed = 0
        self.best: dict[str, tuple[float, str, str]] = {}  # task -> (score, metric, run label)
        self.t0 = time.time()

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running[trial.trial_id] = len(trial.config["job"]["runs"])
        log.info(f"start {_label(trial)}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        log.info(f"retry {_label(trial)} (attempt {trial.num_failures + 1} of {self.attempts}): "
                 "it failed or its worker died; its runs resume from their last checkpoints")

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
            self._line(f"failed {_label(trial)}: {result['error']}")
            return
        self.done += size
        for run in (result.get("runs") or {}).values():
            resumed = run.get("resumed_from")
            self._line(f"done {run['model']}/{run['task']} {run['prompt_id']}: "
                       f"{run['metric']}={run['score']:.2f} in {run['wall_time_s']:.0f}s"
                       + (f" (resumed from step {resumed})" if resumed is not None else ""))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.failed += self.running.pop(trial.trial_id, 0)
        self._line(f"failed {_label(trial)} after {self.attempts} attempt(s); see its error "
                   "below")

    def _line(self, event: str) -> None:
        """``event`` (a job or run finished) with where the sweep stands."""
        running = sum(self.running.values())
        best = "; ".join(f"{task} {metric} {score:.2f} ({label})"
                         for task, (score, metric, label) in sorted(self.best.items()))
        tally = Tally(total=self.total, done=self.done, running=running, failed=self.failed,
                      executed=self.done + self.failed, elapsed_s=time.time() - self.t0)
        log.info(progress_line(event, tally, f"best: {best}" if best else ""))


def _label(trial) -> str:
    return trial.config["job"]["label"]
