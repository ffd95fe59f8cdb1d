"""The sidecar's derived engine snapshot, from the real vLLM fixture and scrapes built from it."""

from __future__ import annotations

import math

import pytest

from slo_sidecar.sidecar.engine_snapshot import FAMILIES, PROCESS_START, SnapshotBuilder
from slo_sidecar.sidecar.exposition import Sample, parse
from tests.helpers import VLLM_EXPOSITION



def fixture_samples() -> list[Sample]:
    return parse(VLLM_EXPOSITION.read_text(), FAMILIES)


def advanced(samples: list[Sample], changes: dict[tuple[str, str], float]) -> list[Sample]:
    """The same scrape with some samples moved on: {(name, le or ""): delta}."""
    moved = []
    for sample in samples:
        delta = changes.get((sample.name, sample.label("le")), 0.0)
        moved.append(sample._replace(value=sample.value + delta))
    return moved


def test_first_scrape_gives_gauges_but_no_rates_yet():
    stats = SnapshotBuilder(window_s=60).build(fixture_samples(), 0.0, 0.0)
    assert stats.gauges == {"queue_depth": 0.0, "running_requests": 0.0, "kv_cache_usage_ratio": 0.0}
    assert stats.rates == {} and stats.quantiles == {} and stats.error_ratio is None


def test_rates_and_windowed_quantiles_from_two_scrapes():
    deriver = SnapshotBuilder(window_s=60)
    first = fixture_samples()
    deriver.build(first, 0.0, 0.0)
    # 10 s later: 500 more tokens, and 4 requests whose TTFT fell in (0.04, 0.06] and 1 in (0.1, 0.25].
    ttft = "vllm:time_to_first_token_seconds_bucket"
    changes = {("vllm:generation_tokens_total", ""): 500.0}
    for le in ("0.06", "0.08", "0.1"):
        changes[(ttft, le)] = 4.0
    for le in ("0.25", "0.5", "0.75", "1.0", "2.5", "5.0", "7.5", "10.0", "20.0", "40.0", "80.0", "160.0",
               "640.0", "2560.0", "+Inf"):
        changes[(ttft, le)] = 5.0
    stats = deriver.build(advanced(first, changes), 10.0, 10.0)
    assert stats.rates["generation_tokens_per_second"] == pytest.approx(50.0)
    assert stats.rates["prompt_tokens_per_second"] == 0.0
    # Over the window only the 5 new requests count (the 8 from before are history):
    # p50 = rank 2.5 of 4 in (0.04, 0.06] -> 0.04 + 0.02 * 2.5 / 4.
    assert stats.quantiles[("ttft", 0.5)] == pytest.approx(0.0525)
    assert 0.1 < stats.quantiles[("ttft", 0.99)] <= 0.25
    assert math.isnan(stats.quantiles[("e2e", 0.5)])  # nothing finished in the window


def test_engine_restart_gives_no_rate_spike():
    deriver = SnapshotBuilder(window_s=60)
    first = fixture_samples()
    first = started_at(100.0, first)
    assert not deriver.build(first, 0.0, 0.0).restarted
    # The engine restarted: counters start again small, the start time changed.
    reset = started_at(200.0, [s._replace(value=min(s.value, 3.0)) for s in first])
    stats = deriver.build(reset, 10.0, 10.0)
    assert stats.restarted and stats.process_start_time == 200.0
    assert 0 <= stats.rates["generation_tokens_per_second"] <= 0.3 + 1e-9


def started_at(start_time: float, samples: list[Sample]) -> list[Sample]:
    """The scrape with the engine's process start time set (the fixture's own is replaced)."""
    return [s for s in samples if s.name != PROCESS_START] + [Sample(PROCESS_START, (), start_time)]


def test_a_start_time_restored_with_the_slo_state_makes_a_changed_one_a_restart():
    """The sidecar restarted and the engine with it: the first scrape already is a restart."""
    builder = SnapshotBuilder(window_s=60, process_start_time=100.0)
    assert builder.build(started_at(200.0, fixture_samples()), 0.0, 0.0).restarted
    assert not SnapshotBuilder(window_s=60).build(started_at(200.0, fixture_samples()), 0.0, 0.0).restarted


def test_a_changed_bucket_layout_starts_history_again_and_forgets_the_old():
    deriver = SnapshotBuilder(window_s=60)
    samples = fixture_samples()
    deriver.build(samples, 0.0, 0.0)
    assert deriver.build(samples, 1.0, 1.0).quantiles
    # A churned bucket bound: the old one must not stay in memory for ever.
    churned = [s._replace(labels=tuple((k, "0.07" if (k, v) == ("le", "0.06") else v) for k, v in s.labels))
               for s in samples]
    assert deriver.build(churned, 2.0, 2.0).quantiles == {}, "no window spans the two layouts"
    bounds = dict(deriver._layout[1])["vllm:time_to_first_token_seconds"]
    assert 0.07 in bounds and 0.06 not in bounds
    assert deriver.build(churned, 3.0, 3.0).quantiles
