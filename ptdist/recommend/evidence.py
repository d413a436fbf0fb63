"""How a recommendation's TPT runs and its leave-one-task-out check state their numbers, by the
rules of `ptdist.statistics` (docs/replicate.md, "How the report decides").

**The seed is the unit.** A TPT comparison's replicates are its seeds (each seed's run against
that seed's vanilla run); the check's are the study's seeds (one seed's prompts are one
replicate of the whole check: each task left out in turn, on that seed's prompts, averaged over
those folds). The folds of one seed share prompts (each task is a source in the others), so
they are never the unit.

An estimate is the mean over the seeds with its Student-t interval (`over_replicates`), which
holds its coverage from `MIN_REPLICATES` seeds on; with one seed it is the mean alone. A
comparison of two quantities on the same seeds is the paired t-test of the per-seed differences
(`statistics.paired`): called better or worse only when its interval excludes 0, "not
distinguishable" when it holds 0, and "too few to compare (n = 1 seed)" with one seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ptdist.statistics import Interval, over_replicates, paired, verdict, with_basis

UNIT = "seed"


def over_seeds(values: Mapping[int, float | None]) -> Interval:
    """The mean of one value per seed (None and NaN ones left out) with its t-interval."""
    return over_replicates([v for v in values.values() if v is not None])


def difference(a: Mapping[int, float | None], b: Mapping[int, float | None]) -> Interval:
    """``a - b`` over the seeds both define: the paired t-test."""
    return paired({s: v for s, v in a.items() if v is not None},
                  {s: v for s, v in b.items() if v is not None})


def stated(interval: Interval, suffix: str = "") -> str:
    """An estimate over seeds with its interval and what it rests on."""
    return with_basis(interval, UNIT, suffix)


def short(interval: Interval) -> str:
    """The estimate and its interval, or the estimate alone (in a table with an n column)."""
    if not math.isfinite(interval.estimate):
        return "undefined"
    return str(interval) if interval.defined else f"{interval.estimate:.2f}"


def compared(gain: Interval, better: str, worse: str, suffix: str = "",
             same: str = "not distinguishable") -> str:
    """A paired difference stated (`stated`: its test, n and p-value, or "too few to compare
    (n = 1 seed)"), then in words where it has an interval: ``better`` when the interval lies
    above 0, ``worse`` below it, ``same`` when it holds 0."""
    said = verdict(gain)
    if said == "too few":
        return stated(gain, suffix)
    words = {"higher": better, "lower": worse, "not distinguishable": same}[said]
    return f"{stated(gain, suffix)}: {words}"


def as_json(interval: Interval) -> dict[str, Any]:
    """An estimate as --json and the check's file give it (None: undefined, or no interval)."""
    low, high = interval.bounds()
    estimate = interval.estimate if math.isfinite(interval.estimate) else None
    return {"estimate": estimate, "low": low, "high": high, "n": interval.n,
            "method": interval.method, "p": interval.p}
