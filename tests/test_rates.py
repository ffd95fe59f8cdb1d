"""Counter rates across resets, and histogram quantiles, as Prometheus computes them."""

from __future__ import annotations

import math

import pytest

from sidecar.rates import CounterSeries, histogram_quantile


def test_rate_over_a_steady_counter():
    series = CounterSeries(horizon_s=60)
    for t in range(0, 31):
        series.observe(float(t), 10.0 * t)
    assert series.rate(10, now=30) == pytest.approx(10.0)
    assert series.increase(10, now=30) == pytest.approx(100.0)


def test_reset_counts_from_zero_not_negative_or_huge():
    series = CounterSeries(horizon_s=60)
    for t, value in [(0, 1000), (1, 1010), (2, 1020), (3, 5), (4, 15)]:  # the engine restarted at t=3
        series.observe(float(t), float(value))
    assert series.increase(10, now=4) == pytest.approx(20 + 5 + 10)
    assert series.rate(10, now=4) == pytest.approx(35 / 4)


def test_restart_detected_by_start_time_even_when_the_value_grew():
    series = CounterSeries(horizon_s=60)
    series.observe(0.0, 10.0)
    series.observe(1.0, 50.0, restarted=True)  # new process, already past the old value
    assert series.increase(10, now=1) == pytest.approx(50.0)


def test_not_enough_data_is_none_not_zero():
    series = CounterSeries(horizon_s=60)
    assert series.rate(10, now=0) is None
    series.observe(0.0, 3.0)
    assert series.rate(10, now=0) is None


def test_memory_is_bounded_by_the_horizon():
    series = CounterSeries(horizon_s=10)
    for t in range(10_000):
        series.observe(float(t), float(t))
    assert len(series._times) <= 2 * 12  # the horizon's points, plus at most as many awaiting a trim
    assert series.rate(10, now=9999) == pytest.approx(1.0)


BUCKETS = [(0.1, 10.0), (0.5, 60.0), (1.0, 90.0), (math.inf, 100.0)]


@pytest.mark.parametrize("q, expected", [
    (0.05, 0.05),      # inside the first bucket, from 0
    (0.5, 0.42),       # rank 50: 0.1 + 0.4 * (50 - 10) / 50
    (0.9, 1.0),        # exactly the top of a bucket
    (0.99, 1.0),       # in +Inf: the highest finite bound
])
def test_histogram_quantile_matches_prometheus(q, expected):
    assert histogram_quantile(q, BUCKETS) == pytest.approx(expected)


def test_histogram_quantile_without_observations_is_nan():
    assert math.isnan(histogram_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]))
    assert math.isnan(histogram_quantile(0.5, []))
