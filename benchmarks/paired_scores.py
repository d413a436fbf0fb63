"""Did a change of settings change a study's results? Two reports of the same study (the same
models, tasks, seeds and inits; the change, e.g. a performance lever, in between) compared run
by run: each prompt's best score in the second against the same (model, task, seed, init) in
the first, as a paired t over the runs, overall, per model and per (model, task). A lever that
saves compute and keeps results shows differences whose intervals hold 0.

    python benchmarks/paired_scores.py BEFORE/reports/quickstart AFTER/reports/quickstart

Not a timing benchmark: it reads each report's `prompts.parquet` (one row per own prompt).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import table  # noqa: E402

from ptdist.statistics import paired  # noqa: E402

Key = tuple[str, str, int, str]  # model, task, seed, init


def scores(report: Path) -> dict[Key, float]:
    """Each own prompt's best score in ``report``'s prompt table."""
    import pyarrow.parquet as pq

    path = report / "prompts.parquet"
    if not path.is_file():
        sys.exit(f"paired_scores: {path} does not exist; give a report folder of "
                 "`ptdist replicate` (store/reports/<study>)")
    rows = pq.read_table(path, columns=["model", "task", "seed", "init", "score"]).to_pylist()
    return {(r["model"], r["task"], r["seed"], r["init"]): r["score"] for r in rows}


def compare(before: dict[Key, float], after: dict[Key, float]) -> str:
    """The table of paired differences (after - before), all runs, per model, per task."""
    common = sorted(before.keys() & after.keys())
    if not common:
        sys.exit("paired_scores: the two reports share no run (model, task, seed, init)")
    groups: dict[str, list[Key]] = defaultdict(list)
    for key in common:
        groups["all runs"].append(key)
        groups[key[0]].append(key)
        groups[f"{key[0]} {key[1]}"].append(key)
    rows = []
    for name, keys in groups.items():
        b, a = [before[k] for k in keys], [after[k] for k in keys]
        diff = paired(dict(zip(keys, a)), dict(zip(keys, b)), "paired t over runs")
        spread = [f"{statistics.mean(v):.1f} ± {statistics.stdev(v):.1f}" if len(v) > 1
                  else f"{v[0]:.1f}" for v in (b, a)]
        rows.append([name, len(keys), *spread, str(diff),
                     "-" if diff.p is None else f"{diff.p:.3f}"])
    left = len(before.keys() ^ after.keys())
    note = f"\nruns in one report only (left out): {left}" if left else ""
    return table(["runs", "n", "before", "after", "after - before [95 %]", "p"], rows) + note


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before", type=Path, help="the first report folder")
    p.add_argument("after", type=Path, help="the second report folder")
    args = p.parse_args()
    print(f"# best scores paired run by run: {args.after} - {args.before}")
    print(compare(scores(args.before), scores(args.after)))


if __name__ == "__main__":
    main()
