"""What the report's sections share: a section's text, findings and estimates, and how numbers
and their replicates are written."""

from __future__ import annotations

import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ptdist.statistics import Interval
from ptdist.store.results import EstimateRow

FLAG = "⚠"


@dataclass
class Section:
    body: str = ""
    findings: list[str] = field(default_factory=list)
    estimates: list[EstimateRow] = field(default_factory=list)


def short_name(model: str) -> str:
    """A model name for people: a local folder by its name, a packaged model by its package."""
    if model.startswith("pkg:"):
        return model[len("pkg:"):].split("/")[0]
    return os.path.basename(model.rstrip("/")) if os.path.isabs(model) else model


def spread(values: Sequence[float]) -> str:
    """Mean ± sd of values (one value as it is)."""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def seeds_spread(values: Mapping[int, float]) -> str:
    """A cell's replicates: mean ± sd over seeds, then each seed's value."""
    if not values:
        return "-"
    each = ", ".join(f"{v:.1f}" for _, v in sorted(values.items()))
    return f"{spread(list(values.values()))} ({each})" if len(values) > 1 else each


def estimate_row(section: str, model: str, quantity: str, interval: Interval,
                 replicates: Mapping | None = None) -> EstimateRow:
    return EstimateRow(section=section, model=model, quantity=quantity,
                       estimate=interval.estimate, low=interval.bounds()[0],
                       high=interval.bounds()[1], n=interval.n,
                       method=interval.method, p_value=interval.p,
                       replicates=", ".join(f"{k}: {v:.4g}" for k, v in (replicates or {})
                                            .items()))


def num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
