"""The statistics findings rest on, and the coverage of every interval the report prints,
measured by simulating data whose truth is known.

Each coverage check draws 4,000 simulated studies at each n and counts how often the 95 %
interval holds the truth. With 4,000 trials the count's standard error at 95 % coverage is
0.34 points, so the 93-97 % window is +-5.8 standard errors: a method that truly covers 95 %
falls outside it with probability below 1e-8, and one that covers 91 % (or 99 %) falls inside
it with probability below 1e-8. Every draw is seeded, so the checks repeat exactly.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from ptdist.neurons.correlation import global_rows, per_target_rows
from ptdist.statistics import (MIN_ROWS, Interval, over_replicates, paired, percentile_bounds,
                               row_interval, spearman, spearman_rows, t_bounds, t_quantile,
                               t_two_sided_p, verdict)

TRIALS = 4000
SIZES = (2, 3, 5, 10, 30)
WINDOW = (0.93, 0.97)


def _coverage(replicates: np.ndarray, truth: float) -> dict[int, float]:
    """How often the t-interval over the first n replicates of each trial holds ``truth``
    (``replicates``: [TRIALS, max n]), for each n of SIZES."""
    out = {}
    for n in SIZES:
        _, low, high = t_bounds(replicates[:, :n])
        out[n] = float(np.mean((low <= truth) & (truth <= high)))
    return out


def _inside(coverage: dict[int, float]) -> bool:
    return all(WINDOW[0] <= c <= WINDOW[1] for c in coverage.values())


def test_student_t_equals_scipys():
    from scipy import stats

    for df in (1, 2, 3, 4, 9, 29, 200):
        assert t_quantile(df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-9)
        for t in (0.3, 2.1, 7.5):
            assert t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(t, df), rel=1e-9)


def test_a_mean_of_replicates_has_its_t_interval_and_one_replicate_none():
    from scipy import stats

    interval = over_replicates([1.0, 3.0, 8.0], test=True)
    test = stats.ttest_1samp([1.0, 3.0, 8.0], 0.0)
    ci = test.confidence_interval()
    assert (interval.low, interval.high) == pytest.approx((ci.low, ci.high))
    assert interval.p == pytest.approx(test.pvalue) and interval.n == 3
    one = over_replicates([4.0])
    assert not one.defined and one.n == 1 and verdict(one) == "too few"
    assert one.basis("seed") == "too few to compare (n = 1 seed)"
    difference = paired({0: 5.0, 1: 7.0, 2: 9.0}, {0: 1.0, 1: 2.0})  # seed 2 is not paired
    assert difference.n == 2 and difference.estimate == 4.5 and difference.low < 0


def test_verdicts_read_the_interval_of_a_difference():
    assert verdict(Interval(5, 1, 9, 3)) == "higher"
    assert verdict(Interval(-5, -9, -1, 3)) == "lower"
    assert verdict(Interval(1, -3, 5, 3)) == "not distinguishable"


def test_vectorised_spearman_equals_scipys_with_ties_and_missing_values():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(300, 9)).astype(float)
    y = rng.integers(0, 3, size=(300, 9)).astype(float)
    x[rng.random(x.shape) < 0.2] = np.nan
    rho = spearman_rows(x, y)
    for k in range(300):
        keep = np.isfinite(x[k])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns of a constant side; NaN is the answer
            expected = spearmanr(x[k][keep], y[k][keep]).statistic if keep.sum() > 1 else np.nan
        if np.isfinite(expected):
            assert rho[k] == pytest.approx(expected, abs=1e-12)
        else:
            assert np.isnan(rho[k])
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


# --- coverage of the t-interval over seeds ---------------------------------------------------

def test_the_t_interval_over_seeds_covers_normal_replicates():
    rng = np.random.default_rng(1)
    coverage = _coverage(rng.normal(3.0, 2.0, size=(TRIALS, max(SIZES))), 3.0)
    assert _inside(coverage), coverage


def test_a_percentile_bootstrap_over_seeds_would_not():
    """What the report did before: at n = 2 the percentile bootstrap is [min, max]."""
    rng = np.random.default_rng(2)
    data = rng.normal(0.0, 1.0, size=(TRIALS, 2))
    low, high = data.min(axis=1), data.max(axis=1)
    assert np.mean((low <= 0) & (0 <= high)) == pytest.approx(0.5, abs=0.03)


def _matrix_study(rng: np.random.Generator, replicates: int) -> dict[str, np.ndarray]:
    """Replicates (seeds) of a four-task study as the quickstart's: two sentiment tasks (0, 1)
    and two others (2, 3), accuracies on 400 rows (a 0.25-point grid). Each seed's own prompt
    scores its task's chance plus a margin with seed noise; a source prompt scores the target's
    chance plus an offset (task pair) with seed noise, some cells a constant class (no noise,
    one far below chance). Per seed: the group means of relative and chance-normalised transfer
    against that seed's own prompt, and the same-type minus cross-type difference."""
    chance = np.array([43.8, 51.2, 26.1, 50.5])
    margin, own_sd = np.array([22.0, 14.0, 60.0, 12.0]), np.array([2.0, 2.0, 1.0, 2.0])
    offset = np.array([[0, 2, -15, 0], [5, 0, -10, 1], [-48, 1, 0, 0], [0, -3, 20, 0]], float)
    sd = np.array([[0, 12, 3, 0], [6, 0, 2, 2], [0, 1, 0, 0], [0, 4, 6, 0]], float)
    own = chance + margin + own_sd * rng.normal(size=(replicates, 4))
    own = np.round(own * 4) / 4
    score = np.clip(np.round((chance + offset + sd * rng.normal(size=(replicates, 4, 4))) * 4)
                    / 4, 0, 100)
    relative = 100 * score / own[:, None, :]
    normalized = 100 * (score - chance) / (own[:, None, :] - chance)
    same, cross = [(0, 1), (1, 0)], [(0, 2), (2, 0), (1, 2), (2, 1), (3, 1), (3, 2)]
    out = {}
    for name, values in (("relative", relative), ("chance-normalised", normalized)):
        a = np.mean([values[:, s, t] for s, t in same], axis=0)
        b = np.mean([values[:, s, t] for s, t in cross], axis=0)
        out.update({f"same-type {name}": a, f"cross-type {name}": b,
                    f"same - cross {name}": a - b})
    return out


def test_the_t_interval_over_seeds_covers_the_matrix_groups_and_their_difference():
    rng = np.random.default_rng(3)
    truth = {k: v.mean() for k, v in _matrix_study(rng, 400_000).items()}
    trials = _matrix_study(rng, TRIALS * max(SIZES))
    for name, values in trials.items():
        coverage = _coverage(values.reshape(TRIALS, max(SIZES)), truth[name])
        assert _inside(coverage), (name, coverage)


# --- coverage of the Spearman intervals ------------------------------------------------------

def _indicator_study(rng: np.random.Generator, tasks: int, replicates: int,
                     signal: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Replicates (seeds) of an indicator study as ``[seed, source, target]`` arrays: ``tasks``
    tasks with fixed similarities; in each seed an indicator A measures a pair's similarity with
    noise of its source prompt and of the pair, indicator B with more noise, and transfer
    follows the similarity (``signal``) with noise of its source prompt and of the pair. Each
    seed's own prompts are compared within the seed, so the replicates are independent."""
    similarity = np.random.default_rng(7).normal(size=(tasks, tasks))
    shape = (replicates, tasks, tasks)
    source = rng.normal(size=(replicates, tasks, 1))
    a = similarity + 0.5 * source + 0.5 * rng.normal(size=shape)
    b = similarity + 0.5 * source + 1.0 * rng.normal(size=shape)
    y = signal * similarity + 0.5 * rng.normal(size=(replicates, tasks, 1)) + \
        0.5 * rng.normal(size=shape)
    diagonal = np.eye(tasks, dtype=bool)
    return tuple(np.where(diagonal, np.nan, v) for v in (a, b, y))


def _per_target(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each seed's mean per-target coefficient (`ptdist.neurons.correlation`)."""
    return per_target_rows(x, y).mean(axis=-1)


@pytest.mark.parametrize("signal", [0.0, 3.0])
def test_spearman_intervals_cover_at_their_calibrated_minimum(signal):
    """At the fewest points the correlation stage gives an interval for: 6 targets of 5
    sources per seed (per target, and the paired difference of two indicators) and 20 pairs
    per seed (global, 5 tasks), with no association and with a strong one."""
    from ptdist.neurons.correlation import (CALIBRATED_PAIRS, CALIBRATED_SOURCES,
                                            CALIBRATED_TARGETS)

    assert (CALIBRATED_TARGETS, CALIBRATED_SOURCES, CALIBRATED_PAIRS) == (6, 5, 20)
    rng = np.random.default_rng(4)
    statistics = {"per-target": (6, lambda a, b, y: _per_target(a, y)),
                  "A - B per-target": (6, lambda a, b, y: _per_target(a, y) - _per_target(b, y)),
                  "global": (5, lambda a, b, y: global_rows(a, y))}
    for name, (tasks, statistic) in statistics.items():
        truth = statistic(*_indicator_study(rng, tasks, 20_000, signal)).mean()
        values = statistic(*_indicator_study(rng, tasks, TRIALS * max(SIZES), signal))
        coverage = _coverage(values.reshape(TRIALS, max(SIZES)), truth)
        assert _inside(coverage), (name, signal, coverage)


def _below_minimum(tasks: int, signal: float) -> dict[int, float]:
    rng = np.random.default_rng(5)
    truth = _per_target(*_indicator_study(rng, tasks, 20_000, signal)[::2]).mean()
    a, _, y = _indicator_study(rng, tasks, TRIALS * max(SIZES), signal)
    return _coverage(_per_target(a, y).reshape(TRIALS, max(SIZES)), truth)


def test_a_per_target_spearman_over_fewer_sources_would_not_cover():
    """Why there is a minimum: with 4 tasks each target has 3 sources per seed, and over two
    seeds the interval covers less than 90 % in a strong association."""
    assert _below_minimum(4, 3.0)[2] < 0.9


# --- coverage of the row bootstrap -----------------------------------------------------------

def _row_coverage(rows: int) -> float:
    """A prompt's accuracy minus the majority class's, per row -1, 0 or +1 (a prompt right on
    70 % of rows, the majority class on 55 %, independently), resampled as the evaluation rows
    are (`row_interval`; resampling the rows of a mean is drawing their category counts)."""
    rng = np.random.default_rng(6)
    p = np.array([0.3 * 0.55, 0.7 * 0.55 + 0.3 * 0.45, 0.7 * 0.45])  # -1, 0, +1
    truth = 100 * (p[2] - p[0])
    counts = rng.multinomial(rows, p, size=TRIALS)
    draws = rng.multinomial(rows, counts / rows, size=(1000, TRIALS))
    low, high = percentile_bounds((100 * (draws[..., 2] - draws[..., 0]) / rows).T)
    return float(np.mean((low <= truth) & (truth <= high)))


@pytest.mark.parametrize("rows", [MIN_ROWS, 100, 400])
def test_the_row_bootstrap_of_a_score_difference_covers_from_its_minimum(rows):
    coverage = _row_coverage(rows)
    assert WINDOW[0] <= coverage <= WINDOW[1], coverage
    assert not row_interval(1.0, np.zeros(10), MIN_ROWS - 1).defined


def test_resamples_are_seeded_and_draw_with_replacement():
    from ptdist.statistics import resamples

    draws = resamples(10, count=500, seed=3)
    assert draws.shape == (500, 10) and draws.min() == 0 and draws.max() == 9
    assert (draws == resamples(10, count=500, seed=3)).all()
    assert any(len(set(row)) < 10 for row in draws)
    assert math.isfinite(t_quantile(1))


def coverage_table() -> list[str]:
    """The coverage of each interval at each n, as docs/replicate.md shows it (run this file:
    `python tests/test_statistics.py`); the same simulations as the tests above."""
    rng = np.random.default_rng(1)
    rows = {"mean of normal replicates (t over seeds)":
            _coverage(rng.normal(3.0, 2.0, size=(TRIALS, max(SIZES))), 3.0)}
    rng = np.random.default_rng(3)
    truth = {k: v.mean() for k, v in _matrix_study(rng, 400_000).items()}
    for name, values in _matrix_study(rng, TRIALS * max(SIZES)).items():
        rows[f"{name} transfer (t over seeds)"] = _coverage(
            values.reshape(TRIALS, max(SIZES)), truth[name])
    for signal in (0.0, 3.0):
        rng = np.random.default_rng(4)
        for name, tasks, statistic in (
                ("per-target Spearman, 6 targets x 5 sources", 6,
                 lambda a, b, y: _per_target(a, y)),
                ("paired difference of two per-target Spearmans", 6,
                 lambda a, b, y: _per_target(a, y) - _per_target(b, y)),
                ("global Spearman, 20 pairs", 5, lambda a, b, y: global_rows(a, y))):
            true = statistic(*_indicator_study(rng, tasks, 20_000, signal)).mean()
            values = statistic(*_indicator_study(rng, tasks, TRIALS * max(SIZES), signal))
            rows[f"{name} (signal {signal:g})"] = _coverage(
                values.reshape(TRIALS, max(SIZES)), true)
    for tasks, signal in ((4, 3.0), (5, 10.0)):
        rows[f"below the minimum: per-target Spearman, {tasks} targets x {tasks - 1} sources "
             f"(signal {signal:g})"] = _below_minimum(tasks, signal)
    lines = ["| interval | " + " | ".join(f"n = {n}" for n in SIZES) + " |",
             "|---|" + "---|" * len(SIZES)]
    lines += [f"| {name} | " + " | ".join(f"{100 * c[n]:.1f} %" for n in SIZES) + " |"
              for name, c in rows.items()]
    sizes = (30, MIN_ROWS, 100, 400)
    lines += ["", "| interval | " + " | ".join(f"{n} rows" for n in sizes) + " |",
              "|---|" + "---|" * len(sizes), "| paired row bootstrap of an accuracy difference | "
              + " | ".join(f"{100 * _row_coverage(n):.1f} %" for n in sizes) + " |"]
    return lines


if __name__ == "__main__":
    print("\n".join(coverage_table()))
