"""The statistics findings rest on: bootstrap intervals on samples whose interval is known,
and how two intervals are put into words."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ptdist.statistics import Interval, bootstrap, compare, percentile_interval, resamples


def test_the_bootstrap_interval_of_a_mean_matches_the_normal_theory_one():
    sample = np.random.default_rng(1).normal(loc=3.0, scale=2.0, size=2000)
    interval = bootstrap(sample)
    half = 1.96 * sample.std(ddof=1) / math.sqrt(len(sample))  # 0.0877
    assert interval.estimate == pytest.approx(sample.mean())
    assert interval.low == pytest.approx(sample.mean() - half, abs=0.1 * half)
    assert interval.high == pytest.approx(sample.mean() + half, abs=0.1 * half)


def test_the_bootstrap_interval_of_a_proportion_is_the_binomial_one():
    # 100 coin flips, 50 heads: the resampled proportion is Binomial(100, 0.5) / 100, whose
    # 2.5th and 97.5th percentiles are 0.40 and 0.60.
    interval = bootstrap([0.0, 1.0] * 50)
    assert interval.estimate == 0.5
    assert interval.low == pytest.approx(0.40, abs=0.011)
    assert interval.high == pytest.approx(0.60, abs=0.011)


def test_a_constant_sample_has_a_zero_width_interval_and_an_empty_one_none():
    assert bootstrap([7.0] * 12) == Interval(7.0, 7.0, 7.0)
    empty = bootstrap([])
    assert not empty.defined and str(empty) == "undefined"


def test_resamples_are_seeded_and_draw_with_replacement():
    draws = resamples(10, count=500, seed=3)
    assert draws.shape == (500, 10) and draws.min() == 0 and draws.max() == 9
    assert (draws == resamples(10, count=500, seed=3)).all()
    assert any(len(set(row)) < 10 for row in draws)  # some rows repeat an index


def test_undefined_replicates_are_left_out_and_too_many_leave_no_interval():
    half = [float("nan")] * 600 + list(np.linspace(0, 1, 400))
    assert not percentile_interval(0.5, half).defined
    mostly = [float("nan")] * 100 + list(np.linspace(0, 1, 900))
    interval = percentile_interval(0.5, mostly)
    assert interval.low == pytest.approx(0.025, abs=1e-3)


def test_findings_are_worded_from_overlapping_intervals():
    assert compare(Interval(80, 75, 85), Interval(60, 50, 70)) == "higher"
    assert compare(Interval(60, 50, 70), Interval(80, 75, 85)) == "lower"
    assert compare(Interval(72, 65, 80), Interval(60, 50, 70)) == "not distinguishable"
    nan = float("nan")
    assert compare(Interval(90, nan, nan), Interval(10, 5, 15)) == "not distinguishable"
