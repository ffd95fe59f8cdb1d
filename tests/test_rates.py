"""Counter rates across resets, and histogram quantiles, as Prometheus computes them."""

from __future__ import annotations

import math

import pytest

from slo_sidecar.sidecar.rates import CounterVector, histogram_quantile


def test_increase_over_a_window_of_steady_counters():
    series = CounterVector(horizon_s=60)
    for t in range(0, 31):
        series.observe(float(t), [10.0 * t, 1.0 * t])
    assert series.increase(10, now=30) == pytest.approx([100.0, 10.0])
    assert series.covered_s(10, now=30) == 10
    assert series.covered_s(100, now=30) == 30  # only what the data covers


def test_reset_counts_from_zero_not_negative_or_huge_per_counter():
    series = CounterVector(horizon_s=60)
    # The first counter reset at t=3 (its process restarted); the second went on.
    for t, values in [(0, [1000, 7]), (1, [1010, 8]), (2, [1020, 9]), (3, [5, 10]), (4, [15, 11])]:
        series.observe(float(t), [float(v) for v in values])
    assert series.increase(10, now=4) == pytest.approx([20 + 5 + 10, 4])


def test_restart_detected_by_start_time_even_when_the_value_grew():
    series = CounterVector(horizon_s=60)
    series.observe(0.0, [10.0, 2.0])
    series.observe(1.0, [50.0, 3.0], restarted=True)  # new process, already past the old values
    assert series.increase(10, now=1) == pytest.approx([50.0, 3.0])


def test_not_enough_data_is_none_not_zero():
    series = CounterVector(horizon_s=60)
    assert series.increase(10, now=0) is None
    series.observe(0.0, [3.0])
    assert series.increase(10, now=0) is None and series.covered_s(10, now=0) is None


def test_memory_is_bounded_by_the_horizon():
    series = CounterVector(horizon_s=10)
    for t in range(10_000):
        series.observe(float(t), [float(t)])
    assert len(series._rows) <= 2 * 12  # the horizon's points, plus at most as many awaiting a trim
    assert series.increase(10, now=9999) == [10.0]


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
