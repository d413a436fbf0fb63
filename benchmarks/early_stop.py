"""What would early stopping have saved, and cost, in a finished study? Every prompt run of a
store is replayed under each (patience, min_steps) of a grid with the rule the training loop
applies (`ptdist.training.tracking.stop_step`): the step it would have stopped at, so the steps
saved, and its best score up to then against the best of its whole curve (keep-best keeps the
best evaluation, so stopping can only lose the gains that came later).

    python benchmarks/early_stop.py --store /tmp/qs-store [--patience 1 2 3] [--min 0.25 0.5 0.75]

`--min` is min_steps as a fraction of each run's steps. Runs that already stopped early are left
out (their curves are cut). Not a timing benchmark: steps saved stand for the prompt stage's
training compute (its evaluations are a few percent of it here).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import table  # noqa: E402

from ptdist.store import Store  # noqa: E402
from ptdist.store.manifests import PromptManifest  # noqa: E402
from ptdist.training.tracking import stop_step  # noqa: E402


def curve(manifest: PromptManifest) -> list[tuple[int, float]]:
    return [(e["step"], e[manifest.metric]) for e in manifest.history]


def replay(runs: list[PromptManifest], patience: int, min_fraction: float) -> list[object]:
    """One row: runs stopped, steps saved, and the points of best score lost."""
    stopped, saved, total, lost = 0, 0, 0, []
    for m in runs:
        c = curve(m)
        last = c[-1][0]
        at = stop_step(c, patience, round(min_fraction * last))
        stopped += at < last
        saved += last - at
        total += last
        lost.append(max(s for _, s in c) - max(s for step, s in c if step <= at))
    return [patience, min_fraction, f"{stopped}/{len(runs)}", saved / total,
            statistics.fmean(lost), max(lost), sum(x > 1 for x in lost)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True, help="a finished study's store")
    p.add_argument("--patience", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--min", type=float, nargs="+", default=[0.25, 0.5, 0.75],
                   help="min_steps as a fraction of each run's steps")
    args = p.parse_args(argv)
    manifests = Store(args.store).prompts.manifests()
    runs = [m for m in manifests if m.history and m.steps == m.config["steps"]]
    evals = sorted({len(m.history) for m in runs})
    print(f"# early stopping replayed on {len(runs)} runs of {args.store} "
          f"({len(manifests) - len(runs)} cut short left out; evaluations per run: {evals})")
    print(table(["patience", "min_steps / steps", "runs stopped", "steps saved",
                 "mean points lost", "max points lost", "runs losing > 1 point"],
                [replay(runs, patience, fraction)
                 for patience in args.patience for fraction in args.min]))


if __name__ == "__main__":
    main()
