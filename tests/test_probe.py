"""The sidecar's probes: what an unanswered one stands for, and who may mark a request as a probe."""

from __future__ import annotations

import asyncio
from unittest import mock

import pytest

from slo_sidecar.engine.asgi import is_probe
from slo_sidecar.sidecar.config import SidecarConfig
from slo_sidecar.sidecar.exposition import Sample
from slo_sidecar.sidecar.probe import Prober, error_code, result_of
from slo_sidecar.sidecar.slo_tracker import SloTracker
from slo_sidecar.spec.load import DEFAULT_SPEC, load_spec
from slo_sidecar.spec.model import PROBE_HEADER, PROBE_MISSED

ENGINE = "slo_engine_http_requests_total"
MODEL = (("model_name", "tiny"),)


def ok_requests(count: float) -> list[Sample]:
    return [Sample(ENGINE, (("code", "200"), ("endpoint", "/v1/completions"), *MODEL), count),
            Sample(ENGINE, (("code", "500"), ("endpoint", "/v1/completions"), *MODEL), 0.0)]


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


def availability(tracker: SloTracker, now: float, window: str) -> float:
    state = next(s for s in tracker.states(now) if s.slo.name == "availability")
    return next(w.error_ratio for w in state.windows if w.window == window)


def test_results():
    assert [result_of(s) for s in (200, 204, 500, 429, 401, 503, None)] == [
        "success", "success", "error", "error", "error", "unanswered", "unanswered"]
    assert result_of(503, "draining") == "draining" and result_of(503, "unavailable") == "unanswered"
    # vLLM's own admission limit: served, refused, and counted by the server (an error, nothing lost).
    assert result_of(503, error_code(b'{"error": {"message": "busy", "code": 503}}')) == "error"
    assert error_code(b'{"error": {"code": "draining"}}') == "draining"
    assert error_code(b"<html>") == error_code(b'["x"]') == error_code(b'{"error": "x"}') == ""


def test_an_unanswered_probe_stands_for_the_requests_of_its_interval_at_the_recent_rate():
    tracker, clock = SloTracker(load_spec(str(DEFAULT_SPEC))), Clock(1_000_000.0)
    start = clock.t
    for second in range(0, 601, 10):  # 2 requests a second for 10 minutes, all good
        tracker.observe(ok_requests(2.0 * second), start + second)
    prober = Prober(SidecarConfig(probe_interval_s=10), tracker, now=clock)
    identity = tracker.service_identity()
    assert identity == {"model_name": "tiny"}
    clock.t = start + 600
    prober.record("success", identity)  # the last answer, with the rate users sent until then
    for second in (610, 620, 630):  # the engine dies: three probes go unanswered
        clock.t = start + second
        prober.record("unanswered", identity)
    # 1200 requests in 600 s: 2 a second, so each unanswered 10 s probe stands for 20 lost requests.
    assert prober.weight == 20 and prober.missed == 60
    # The 5 minutes to 630 s hold 540 answered requests (330 s to 600 s, at 2 a second) and 60 lost ones.
    assert availability(tracker, clock.t, "5m") == pytest.approx(60 / 600)
    clock.t = start + 640
    prober.record("success", identity)  # it answers again: the next outage's weight is taken afresh
    assert prober.weight is None and prober.counts == {"success": 2, "error": 0, "unanswered": 3, "draining": 0}
    prober.record("draining", identity)  # an orderly shutdown loses nothing
    assert prober.missed == 60
    families = {f.name: f for f in prober.families(identity)}
    assert [(s.labels, s.value) for s in families["slo_probe_missed_requests"].samples] == [
        ({"model_name": "tiny"}, 60.0)]


def test_a_service_never_seen_is_not_probed():
    prober = Prober(SidecarConfig(), SloTracker(load_spec(str(DEFAULT_SPEC))))
    with mock.patch.object(prober, "_send") as send:
        assert asyncio.run(prober.poll()) == []
    send.assert_not_called()


def test_a_quiet_service_loses_at_least_one_request_a_probe():
    tracker, clock = SloTracker(load_spec(str(DEFAULT_SPEC))), Clock(2_000_000.0)
    tracker.observe(ok_requests(0.0), clock.t)
    tracker.observe(ok_requests(1.0), clock.t + 600)  # one request in 10 minutes
    clock.t += 600
    prober = Prober(SidecarConfig(), tracker, now=clock)
    prober.record("success", tracker.service_identity())
    clock.t += 10
    prober.record("unanswered", tracker.service_identity())
    assert prober.missed == 1.0


@pytest.mark.parametrize("peer, header, probe", [
    ("127.0.0.1", "1", True), ("::1", "1", True), ("10.1.2.3", "1", False), ("127.0.0.1", None, False)])
def test_only_the_pods_own_sidecar_can_mark_a_probe(peer, header, probe):
    headers = [(PROBE_HEADER.lower().encode(), header.encode())] if header else []
    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": headers, "client": (peer, 5555)}
    assert is_probe(scope) is probe


def test_the_probe_counter_is_what_availability_counts():
    slo = load_spec(str(DEFAULT_SPEC)).slos[0]
    assert PROBE_MISSED in {s.metric for _, s in slo.sli.errors.terms} & {s.metric for _, s in slo.sli.total.terms}
