"""Is `ptdist recommend` right? Leave one task out of a study store: each task of a model's
transfer matrix in turn is the new one, its own prompts hidden, on each seed's prompts, and the
recommendation is compared with the zero-shot transfer (and TPT, where the study ran it) the
study measured: top-1 and top-3 hit rate, Spearman between predicted and measured, regret
(best minus chosen), each a mean over the seeds (the unit) with its t-interval, against a
random source, the same task type and no transfer, compared by paired t-tests over the seeds
(`ptdist.recommend.check`). Prints a per-fold table and the summary as Markdown (for
docs/recommend.md) and, with --json, writes both.

    python benchmarks/recommend.py --store /tmp/qs-store [--probe 50] [--json out.json]

Not a timing benchmark: it loads each model once and scores every fold's candidates on a
sample of the task's training rows (plus, with --probe, trains a probe per fold).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, setup, table  # noqa: E402

from ptdist.recommend import RecommendSettings  # noqa: E402
from ptdist.recommend.check import leave_one_task_out, summarise  # noqa: E402
from ptdist.recommend.evidence import as_json, short  # noqa: E402
from ptdist.store import Store  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True, help="a study's store (ptdist replicate)")
    p.add_argument("--models", nargs="+", default=None,
                   help="models to check (default: every model with a transfer matrix)")
    p.add_argument("--probe", type=int, default=None, metavar="STEPS",
                   help="also train a probe per fold and weigh the indicator as recommend does")
    p.add_argument("--sample", type=int, default=256, help="training rows scored per fold")
    p.add_argument("--data-dir", default=None, help="default: the study's (its prompts')")
    p.add_argument("--json", default=None, help="write the folds and the summary here")
    args = p.parse_args(argv)
    setup()
    store = Store(args.store)
    models = args.models or sorted({m.model for m in store.prompts.manifests()
                                    if store.layout.matrix(m.model).exists()})
    t0 = time.time()
    folds = []
    for model in models:
        prompts = store.prompts.select(model)
        seeds = tuple(sorted({m.seed for m in prompts})) or (0,)
        max_length = max((m.max_length for m in prompts), default=128)
        settings = RecommendSettings(sample=args.sample, seeds=seeds, max_length=max_length,
                                     data_dir=args.data_dir)
        folds += leave_one_task_out(store, model, settings, args.probe)
    measures = summarise(folds)
    print(f"# recommend, leave one task out: {store.root} ({len(folds)} folds, "
          f"{time.time() - t0:.0f} s; {machine()})\n")
    print(table(["model", "new task", "seed", "counted", "predicted (best first)",
                 "measured best", "top-1", "regret", "Spearman"],
                [[f.model, f.target, f.seed, "yes" if f.learned else "no (not learned)",
                  " > ".join(f.predicted), f"{f.best} ({f.measured[f.best]:.1f})",
                  "hit" if f.hit(1) else "miss", f.regret, f.spearman] for f in folds]))
    print()
    print(markdown(measures))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"store": str(store.root), "folds": [f.to_json() for f in folds],
             "summary": [{"measure": m.name, "folds": m.folds,
                          "recommended": as_json(m.recommended),
                          "baselines": {b: as_json(e) for b, e in m.baselines.items()},
                          "comparisons": m.comparisons} for m in measures]}, indent=1))


def markdown(measures) -> str:
    """The summary as docs/recommend.md shows it: each mean over the seeds with its 95 %
    t-interval (none with one seed), then each comparison in words."""
    bases = ("a random source", "the same task type", "no transfer")
    lines = ["| measure | n (seeds) | folds | recommend | " + " | ".join(bases) + " |",
             "|---|---|---|---|---|---|---|"]
    for m in measures:
        cells = [short(m.baselines[b]) if b in m.baselines else "-" for b in bases]
        lines.append(f"| {m.name} | {m.recommended.n} | {m.folds} | {short(m.recommended)} | "
                     + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {m.name} vs {b}: {words}" for m in measures
              for b, words in m.comparisons.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
