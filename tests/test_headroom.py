"""SLO headroom and capacity utilisation (sidecar/headroom.py), worked from first principles.

Headroom of an SLO = the worst p90 / target over its exact targets, clamped to [0, 4], then an
exponentially weighted moving average with time constant tau: v += (1 - exp(-dt / tau)) (x - v).
Utilisation = finished requests per second over the rate window / the capacity report's capacity_rps.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
from prometheus_client import generate_latest

from slo_sidecar.sidecar.app import Sidecar, build_headroom, build_headroom_collector
from slo_sidecar.sidecar.config import ConfigError, SidecarConfig, add_arguments, load_config
from slo_sidecar.sidecar.engine_poller import EnginePoller
from slo_sidecar.sidecar.guard import GuardedExposition
from slo_sidecar.sidecar.headroom import (
    Headroom,
    HeadroomCollector,
    capped_p90,
    clamp,
    ewma,
    exact_targets,
    raw_headroom,
    read_capacity_report,
    utilisation,
)
from slo_sidecar.spec.capacity_report import CAPACITY_VERSION
from slo_sidecar.spec.load import DEFAULT_SPEC, load_spec, parse_spec
from tests.helpers import REPO, metric, parse_metrics

SPEC = parse_spec("""
version: slo-sidecar/v1
service: headroom-test
slos:
  - name: ttft
    objective: 99
    description: first token within 0.5 s
    sli: {latency: {measure: ttft, threshold_s: 0.5}}
  - name: goodput
    objective: 95
    description: first token within 0.5 s, at most 0.1 s per later token
    sli: {goodput: {ttft_s: 0.5, tpot_s: 0.1}}
  - name: availability
    objective: 99.9
    description: no server errors
    sli:
      availability:
        errors: {metric: slo_engine_http_requests_total, matchers: ['code=~"5.."']}
        total: {metric: slo_engine_http_requests_total}
""", "headroom-test.yaml")


@dataclass
class Observed:
    """What the headroom reads of an engine snapshot (headroom.Observed)."""

    gauges: dict[str, float]
    quantiles: dict[tuple[str, float], float]


def stats(p90: dict[str, float], running: float = 0.0, waiting: float = 0.0) -> Observed:
    return Observed({"running_requests": running, "queue_depth": waiting},
                    {(key, 0.9): value for key, value in p90.items()})


# --- the formula ---------------------------------------------------------------------------------

def test_only_exact_latency_and_goodput_slos_have_a_headroom():
    assert exact_targets(SPEC) == {"ttft": {"ttft_s": 0.5}, "goodput": {"ttft_s": 0.5, "tpot_s": 0.1}}
    assert exact_targets(load_spec(str(DEFAULT_SPEC))) == {
        "ttft": {"ttft_s": 0.5}, "e2e-latency": {"e2e_s": 10.0}, "queue-time": {"queue_s": 0.5},
        "goodput": {"ttft_s": 0.5, "tpot_s": 0.1}}
    # A sliced SLO's slices share one name and its targets; vLLM's histograms are the pod's: one headroom.
    assert exact_targets(load_spec(str(REPO / "tests" / "fixtures" / "tenants.slo.yaml"))) == {
        "goodput": {"ttft_s": 0.5, "tpot_s": 0.1}}


def test_p90_over_target():
    # p90 TTFT 0.4 s against a 0.5 s target: 80% of the target used.
    assert raw_headroom({"ttft_s": 0.5}, {("ttft", 0.9): 0.4}) == pytest.approx(0.8)
    # The worst of several targets: TTFT 0.2 / 0.5 = 0.4, TPOT 0.09 / 0.1 = 0.9.
    assert raw_headroom({"ttft_s": 0.5, "tpot_s": 0.1}, {("ttft", 0.9): 0.2, ("tpot", 0.9): 0.09}) == pytest.approx(0.9)
    # Each measure from its own histogram's key (queue: the sidecar's queue_time).
    assert raw_headroom({"queue_s": 0.5, "e2e_s": 10.0}, {("queue_time", 0.9): 0.1, ("e2e", 0.9): 6.0}) == (
        pytest.approx(0.6))
    # Other quantiles do not count: only the p90.
    assert raw_headroom({"ttft_s": 0.5}, {("ttft", 0.99): 5.0, ("ttft", 0.9): 0.25}) == pytest.approx(0.5)


def test_an_unobserved_measure_is_left_out_and_none_observed_is_none():
    targets = {"ttft_s": 0.5, "tpot_s": 0.1}
    assert raw_headroom(targets, {("ttft", 0.9): 0.3, ("tpot", 0.9): math.nan}) == pytest.approx(0.6)
    assert raw_headroom(targets, {("ttft", 0.9): 0.3}) == pytest.approx(0.6)  # histogram not exposed
    assert raw_headroom(targets, {("ttft", 0.9): math.nan, ("tpot", 0.9): math.nan}) is None
    assert raw_headroom(targets, {}) is None


def test_the_p90_is_capped_at_ten_times_the_mean():
    # Markov: for a measure that cannot be negative, P(X >= 10 x mean) <= 0.1, so p90 <= 10 x mean.
    assert capped_p90(0.27, mean=0.001) == pytest.approx(0.01)
    assert capped_p90(0.4, mean=0.1) == 0.4  # the histogram's estimate is below the bound: it stands
    assert capped_p90(0.4, mean=None) == 0.4 and math.isnan(capped_p90(math.nan, mean=0.1))
    # vLLM's first queue-time bucket is 0-0.3 s: requests that all waited ~1 ms put the histogram's p90
    # at 0.9 x 0.3 = 0.27 s, 0.54 of a 0.5 s target; their mean, 1 ms, bounds it at 0.01 s: 0.02.
    assert raw_headroom({"queue_s": 0.5}, {("queue_time", 0.9): 0.27}) == pytest.approx(0.54)
    assert raw_headroom({"queue_s": 0.5}, {("queue_time", 0.9): 0.27}, {"queue_time": 0.001}) == pytest.approx(0.02)


def test_clamped_to_0_to_4():
    assert clamp(20.0) == 4.0 and clamp(-1.0) == 0.0 and clamp(0.8) == 0.8
    # A stalled engine: p90 TTFT 10 s against 0.5 s is 20x, served as 4.
    headroom = Headroom({"ttft": {"ttft_s": 0.5}})
    assert headroom.update(stats({"ttft": 10.0}, running=4), now=0.0) == {"ttft": 4.0}


def test_ewma_over_two_updates_by_hand():
    headroom = Headroom({"ttft": {"ttft_s": 0.5}}, time_constant_s=60.0)
    assert headroom.update(stats({"ttft": 0.4}, running=1), now=100.0) == {"ttft": pytest.approx(0.8)}  # first: as is
    # A minute later p90 is 1.0 s (2.0x): 0.8 + (1 - e^-1) x (2.0 - 0.8) = 0.8 + 0.632121 x 1.2 = 1.558545.
    assert headroom.update(stats({"ttft": 1.0}, running=1), now=160.0)["ttft"] == pytest.approx(1.558545, abs=1e-6)
    assert headroom.overall == pytest.approx(1.558545, abs=1e-6)


def test_the_average_does_not_depend_on_how_often_it_is_fed():
    # Two 30 s steps towards the same value land where one 60 s step does: 2 - 1.2 e^-1 either way.
    once = ewma(ewma(None, 0.8, 0, 60.0), 2.0, 60.0, 60.0)
    twice = ewma(ewma(ewma(None, 0.8, 0, 60.0), 2.0, 30.0, 60.0), 2.0, 30.0, 60.0)
    assert once == pytest.approx(twice) == pytest.approx(2 - 1.2 * math.exp(-1))


def test_overall_is_the_worst_slo():
    headroom = Headroom(exact_targets(SPEC))
    headroom.update(stats({"ttft": 0.2, "tpot": 0.09}, running=2), now=0.0)
    assert headroom.values == {"ttft": pytest.approx(0.4), "goodput": pytest.approx(0.9)}
    assert headroom.overall == pytest.approx(0.9)


def test_an_idle_engine_reads_0_and_decays_there():
    headroom = Headroom({"ttft": {"ttft_s": 0.5}}, time_constant_s=60.0)
    # Never busy: 0 from the first scrape (all its headroom), not absent (the HPA could not scale down).
    assert headroom.update(stats({"ttft": math.nan}), now=0.0) == {"ttft": 0.0}
    headroom.update(stats({"ttft": 0.5}, running=3), now=10.0)  # at the target (1.0): the first busy sample...
    assert headroom.values["ttft"] == pytest.approx(1 - math.exp(-10 / 60))  # ...averaged in from 0
    headroom.clear()
    headroom.update(stats({"ttft": 0.5}, running=3), now=10.0)
    # Then nothing in the window, nothing running or waiting: the average decays towards 0, e^-1 a minute.
    headroom.update(stats({"ttft": math.nan}), now=70.0)
    assert headroom.values["ttft"] == pytest.approx(math.exp(-1))


def test_requests_in_flight_but_none_measured_hold_the_last_value():
    headroom = Headroom({"ttft": {"ttft_s": 0.5}})
    # Nothing observed yet and requests in flight: no value at all (not a made-up 0).
    assert headroom.update(stats({"ttft": math.nan}, waiting=5), now=0.0) == {}
    assert headroom.overall is None
    headroom.update(stats({"ttft": 0.6}, running=1), now=1.0)
    # A stall: requests running or waiting, none reaching its first token within the window. Held, not 0.
    for now in (30.0, 60.0, 300.0):
        assert headroom.update(stats({"ttft": math.nan}, running=2, waiting=8), now=now) == {
            "ttft": pytest.approx(1.2)}
    # Without the gauges the engine is not known to be idle: held as well.
    no_gauges = Observed(gauges={}, quantiles={})
    assert headroom.update(no_gauges, now=400.0) == {"ttft": pytest.approx(1.2)}


# --- through the engine poller and the exposition ----------------------------------------------

TTFT_BOUNDS = (0.1, 0.25, 0.5, 1.0)
TPOT_BOUNDS = (0.025, 0.05, 0.1, 0.2)


def histogram(family: str, bounds: tuple[float, ...], cumulative: tuple[float, ...]) -> str:
    lines = [f"# TYPE {family} histogram"]
    for bound, count in zip((*bounds, "+Inf"), cumulative):
        lines.append(f'{family}_bucket{{engine="0",le="{bound}",model_name="m"}} {count}')
    lines.append(f'{family}_count{{engine="0",model_name="m"}} {cumulative[-1]}')
    return "\n".join(lines)


def engine_text(ttft: tuple[float, ...], tpot: tuple[float, ...], finished: float, running: float = 0,
                waiting: float = 0) -> str:
    return "\n".join([
        "# TYPE vllm:num_requests_running gauge", f'vllm:num_requests_running{{engine="0",model_name="m"}} {running}',
        "# TYPE vllm:num_requests_waiting gauge", f'vllm:num_requests_waiting{{engine="0",model_name="m"}} {waiting}',
        "# TYPE vllm:request_success_total counter",
        f'vllm:request_success_total{{engine="0",finished_reason="stop",model_name="m"}} {finished}',
        histogram("vllm:time_to_first_token_seconds", TTFT_BOUNDS, ttft),
        histogram("vllm:request_time_per_output_token_seconds", TPOT_BOUNDS, tpot),
    ]) + "\n"


ZERO = (0, 0, 0, 0, 0)


def wired(config: SidecarConfig, spec=SPEC) -> tuple[Sidecar, EnginePoller, GuardedExposition, Headroom]:
    """The sidecar's wiring (app.serve): the headroom fed each engine snapshot, served through the guard."""
    headroom = build_headroom(config, spec)
    engine = EnginePoller(config, [headroom])
    exposition = GuardedExposition()
    sidecar = Sidecar(config, [engine], exposition)
    exposition.add("headroom", build_headroom_collector(config, headroom, sidecar, engine))
    return sidecar, engine, exposition, headroom


def scrape(monkeypatch, engine: EnginePoller, sidecar: Sidecar, now: float, text: str) -> None:
    monkeypatch.setattr("slo_sidecar.sidecar.engine_poller.time.monotonic", lambda: now)
    engine.take(text)
    state = sidecar.states["engine"]
    state.last_success, state.last_error = time.time(), None


def served(exposition: GuardedExposition) -> dict:
    return parse_metrics(exposition.encode(generate_latest).decode())


def test_headroom_and_utilisation_from_vllms_histograms_and_withdrawn_when_stale(monkeypatch):
    config = SidecarConfig(rate_window_s=60.0, capacity_rps=3.1)
    sidecar, engine, exposition, _ = wired(config)
    scrape(monkeypatch, engine, sidecar, 100.0, engine_text(ZERO, ZERO, finished=100, running=2))
    # A minute later 20 requests had had their first token and 93 had finished.
    # TTFT buckets (0.1, 0.25, 0.5, 1, +Inf), cumulative: 5, 15, 20, 20, 20. The p90's rank is 0.9 x 20 = 18,
    # in (0.25, 0.5] which holds 5 from 15: 0.25 + 0.25 x (18 - 15) / 5 = 0.4 s; over 0.5 s: 0.8.
    # TPOT buckets (0.025, 0.05, 0.1, 0.2, +Inf): 2, 10, 20, 20, 20. Rank 18 in (0.05, 0.1], 10 from 10:
    # 0.05 + 0.05 x (18 - 10) / 10 = 0.09 s; over 0.1 s: 0.9. The goodput SLO's worst: 0.9.
    scrape(monkeypatch, engine, sidecar, 160.0,
           engine_text((5, 15, 20, 20, 20), (2, 10, 20, 20, 20), finished=193, running=2))
    fresh = served(exposition)
    assert metric(fresh, "slo_headroom_ratio", slo="ttft") == pytest.approx(0.8)
    assert metric(fresh, "slo_headroom_ratio", slo="goodput") == pytest.approx(0.9)
    assert metric(fresh, "slo_headroom_overall_ratio") == pytest.approx(0.9)
    assert not any(dict(labels).get("slo") == "availability" for _, labels in fresh)  # no latency target
    # 93 requests finished in 60 s: 1.55 req/s, half the report's 3.1.
    assert metric(fresh, "slo_capacity_utilisation_ratio") == pytest.approx(0.5)
    assert metric(fresh, "slo_capacity_requests_per_second") == pytest.approx(3.1)

    # Past stale_after_s the engine's values are withdrawn, and the headroom and utilisation with them;
    # the report's capacity is not the engine's and stays.
    sidecar.states["engine"].last_success = time.time() - 10 * config.stale_after_s
    stale = served(exposition)
    assert not any(name.startswith(("slo_headroom", "slo_capacity_utilisation")) for name, _ in stale)
    assert metric(stale, "slo_capacity_requests_per_second") == pytest.approx(3.1)


def test_an_idle_pod_serves_0_and_no_report_no_utilisation(monkeypatch):
    sidecar, engine, exposition, _ = wired(SidecarConfig())
    scrape(monkeypatch, engine, sidecar, 0.0, engine_text(ZERO, ZERO, finished=7))
    scrape(monkeypatch, engine, sidecar, 60.0, engine_text(ZERO, ZERO, finished=7))
    idle = served(exposition)
    assert metric(idle, "slo_headroom_ratio", slo="ttft") == 0.0
    assert ("slo_headroom_overall_ratio", frozenset()) in idle and metric(idle, "slo_headroom_overall_ratio") == 0.0
    assert not any(name.startswith("slo_capacity") for name, _ in idle)


def test_the_tpot_p90_is_derived_from_vllms_per_request_histogram(monkeypatch):
    _, engine, _, _ = wired(SidecarConfig())
    monkeypatch.setattr("slo_sidecar.sidecar.engine_poller.time.monotonic", lambda: 0.0)
    engine.take(engine_text(ZERO, ZERO, finished=0))
    monkeypatch.setattr("slo_sidecar.sidecar.engine_poller.time.monotonic", lambda: 10.0)
    engine.take(engine_text(ZERO, (0, 0, 10, 10, 10), finished=10))
    # Rank 9 in (0.05, 0.1], 10 from 0: 0.05 + 0.05 x 9 / 10 = 0.095 s.
    assert engine.last_snapshot.quantiles[("tpot", 0.9)] == pytest.approx(0.095)


def test_the_cap_reads_the_histograms_sum_and_count_over_the_window(monkeypatch):
    spec = parse_spec("""
version: slo-sidecar/v1
service: queue-test
slos:
  - name: queue-time
    objective: 99
    description: waited at most 0.5 s
    sli: {latency: {measure: queue, threshold_s: 0.5}}
""", "queue-test.yaml")
    _, engine, _, headroom = wired(SidecarConfig(), spec)

    def queue_text(count: float, total: float) -> str:
        return "\n".join([
            'vllm:num_requests_running{engine="0",model_name="m"} 1',
            'vllm:num_requests_waiting{engine="0",model_name="m"} 0',
            histogram("vllm:request_queue_time_seconds", (0.3, 0.5), (count, count, count)),
            f'vllm:request_queue_time_seconds_sum{{engine="0",model_name="m"}} {total}',
        ]) + "\n"

    for now, count, total in ((0.0, 100, 0.5), (60.0, 150, 0.55)):
        monkeypatch.setattr("slo_sidecar.sidecar.engine_poller.time.monotonic", lambda now=now: now)
        engine.take(queue_text(count, total))
    # 50 requests in the window, all in the first bucket, 0.05 s of queueing between them: a 1 ms mean.
    # The histogram alone says 0.27 s (0.54); capped at 10 x 1 ms = 0.01 s: 0.02 of the 0.5 s target.
    assert engine.last_snapshot.quantiles[("queue_time", 0.9)] == pytest.approx(0.27)
    assert engine.last_snapshot.means["queue_time"] == pytest.approx(0.001)
    assert headroom.values == {"queue-time": pytest.approx(0.02)}


def test_no_exact_slo_no_headroom_families():
    collector = HeadroomCollector(Headroom({}), fresh=lambda: True)
    assert list(collector.collect()) == []


# --- utilisation ---------------------------------------------------------------------------------

def test_utilisation_arithmetic():
    assert utilisation(2.48, 3.1) == pytest.approx(0.8)
    assert utilisation(6.2, 3.1) == pytest.approx(2.0)  # past capacity: served as is, not clamped
    assert utilisation(0.0, 3.1) == 0.0
    assert utilisation(None, 3.1) is None  # no rate yet (one scrape)
    assert utilisation(1.0, None) is None  # no report


# --- the capacity report -------------------------------------------------------------------------

def report(**fields) -> str:
    return json.dumps({"version": CAPACITY_VERSION, "url": "http://engine:8000", "steps": [], "capacity_rps": 3.1,
                       **fields})


def config_from(argv: list[str], environ: dict[str, str] | None = None) -> SidecarConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return load_config(parser.parse_args(argv), environ or {})


def test_the_report_is_read_at_start(tmp_path):
    path = tmp_path / "capacity.json"
    path.write_text(report(capacity_rps=3.1))
    assert read_capacity_report(path) == 3.1
    config = config_from(["--capacity", str(path)])
    assert (config.capacity, config.capacity_rps) == (str(path), 3.1)
    from_env = config_from([], {"SLO_SIDECAR_CAPACITY": str(path)})
    assert from_env.capacity_rps == 3.1
    assert config_from([]).capacity_rps is None
    assert SidecarConfig().headroom_time_constant_s == 60.0
    assert config_from(["--headroom-time-constant-s", "30"]).headroom_time_constant_s == 30.0


@pytest.mark.parametrize("content, reason", [
    (None, "cannot read: No such file or directory"),
    ("{not json", "not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
    (b"\xff\xfe{}", "not UTF-8 text"),
    ("[1, 2]", "expected a JSON object"),
    ("[" * 100_000, "not valid JSON"),
    (report(version="slo-sidecar/capacity/v2"),
     "version: expected 'slo-sidecar/capacity/v1', got 'slo-sidecar/capacity/v2'"),
    (json.dumps({"capacity_rps": 3.1}), "version: expected 'slo-sidecar/capacity/v1', got None"),
    (json.dumps({"version": CAPACITY_VERSION}), "capacity_rps: missing"),
    (report(capacity_rps=None), "capacity_rps: null (the measurement found no rate that meets every SLO"),
    (report(capacity_rps=0), "capacity_rps: expected a number > 0, got 0"),
    (report(capacity_rps=-2.5), "capacity_rps: expected a number > 0, got -2.5"),
    (report(capacity_rps="3.1"), "capacity_rps: expected a number > 0, got '3.1'"),
    (report(capacity_rps=True), "capacity_rps: expected a number > 0, got True"),
    ('{"version": "slo-sidecar/capacity/v1", "capacity_rps": NaN}', "capacity_rps: expected a number > 0, got nan"),
    ('{"version": "slo-sidecar/capacity/v1", "capacity_rps": 1e999}', "capacity_rps: expected a number > 0, got inf"),
    ('{"version": "slo-sidecar/capacity/v1", "capacity_rps": 1' + "0" * 400 + "}",
     "capacity_rps: expected a number > 0"),
])
def test_a_bad_report_is_a_config_error_naming_the_file_and_the_reason(tmp_path, content, reason):
    path = tmp_path / "capacity.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        config_from(["--capacity", str(path)])
    assert str(caught.value).startswith(f"capacity {path}: capacity: ")
    assert reason in str(caught.value)


def test_a_directory_is_not_a_report(tmp_path):
    with pytest.raises(ConfigError, match=f"capacity {tmp_path}: capacity: cannot read: Is a directory"):
        config_from(["--capacity", str(tmp_path)])


def test_the_command_exits_2_naming_the_report(tmp_path):
    path = tmp_path / "capacity.json"
    path.write_text(report(capacity_rps=None))
    result = subprocess.run([sys.executable, "-m", "slo_sidecar.app.cli", "sidecar", "--capacity", str(path)],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"slo-sidecar sidecar: error: capacity {path}: capacity: capacity_rps: null" in result.stderr
    assert "Traceback" not in result.stderr
