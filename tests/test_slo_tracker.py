"""The sidecar's live SLO maths: windows, burn rates, alert states that agree with the generated rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slo_sidecar.alerts.unit_tests import alert_condition, scenarios
from slo_sidecar.sidecar.exposition import Sample
from slo_sidecar.sidecar.slo_tracker import SloTracker, dumps
from slo_sidecar.spec.load import DEFAULT_SPEC, load_spec

SPEC = load_spec(str(DEFAULT_SPEC))
ENDPOINT = ("endpoint", "/v1/completions")


def scrape(ok: float, failed: float, client_errors: float = 0.0) -> list[Sample]:
    name = "slo_engine_http_requests_total"
    return [Sample(name, (("code", "200"), ENDPOINT), ok), Sample(name, (("code", "500"), ENDPOINT), failed),
            Sample(name, (("code", "400"), ENDPOINT), client_errors)]


def availability(tracker: SloTracker, now: float):
    return next(state for state in tracker.states(now) if state.slo.name == "availability")


def window(state, label: str):
    return next(w for w in state.windows if w.window == label)


def test_error_ratio_burn_rate_and_filled_windows():
    tracker = SloTracker(SPEC)
    ok = failed = 0.0
    for second in range(0, 3601, 10):  # an hour at 10 req/s, 1% failing, some client errors
        tracker.observe(scrape(ok, failed, client_errors=second), float(second))
        ok, failed = ok + 99, failed + 1
    state = availability(tracker, 3600.0)
    five = window(state, "5m")
    assert five.error_ratio == pytest.approx(0.01) and five.burn_rate == pytest.approx(10.0)
    assert five.filled and window(state, "1h").filled and not window(state, "6h").filled
    assert five.events == pytest.approx(3000)  # 4xx are in neither side
    # 10x: short of the 14.4x page, over the 6x one; its 6h window is not filled, and like
    # Prometheus's rate() the sidecar judges it on the data there is.
    assert state.firing == {"page": True, "ticket": True}


def test_a_new_series_counts_from_its_second_sample_and_resets_count_the_new_value():
    tracker = SloTracker(SPEC)
    tracker.observe(scrape(1000, 0)[:1], 0.0)  # no 5xx series yet
    tracker.observe(scrape(1100, 7), 10.0)  # the 500 series appears at 7: not an increase yet
    assert window(availability(tracker, 10.0), "5m").error_ratio == 0
    tracker.observe(scrape(1200, 9), 20.0)
    assert window(availability(tracker, 20.0), "5m").error_ratio == pytest.approx(2 / 202)
    tracker.observe(scrape(50, 1), 30.0)  # the engine restarted: counters began again
    five = window(availability(tracker, 30.0), "5m")
    assert five.events == pytest.approx(100 + 100 + 2 + 51) and five.error_ratio == pytest.approx(3 / 253)


def test_a_healthy_idle_service_burns_nothing_and_keeps_its_budget():
    """The SLI's series exist but nothing happened: no error, so ratio and burn 0 and the whole budget,
    as the rules read it; not "no data", which is kept for an SLI whose series were never seen."""
    tracker = SloTracker(SPEC)
    for second in range(0, 600, 10):
        tracker.observe(scrape(5, 0), float(second))
    state = availability(tracker, 590.0)
    five = window(state, "5m")
    assert five.error_ratio == 0 and five.burn_rate == 0 and five.events == 0
    assert state.budget_remaining == 1.0 and state.firing == {"page": False, "ticket": False}

    blind = SloTracker(SPEC)
    blind.observe([Sample("vllm:num_requests_waiting", (), 0.0)], 0.0)  # a scrape without the SLI's series
    blind.observe([Sample("vllm:num_requests_waiting", (), 0.0)], 10.0)
    state = availability(blind, 10.0)
    assert window(state, "5m").error_ratio is None and state.budget_remaining is None


@pytest.mark.parametrize("scenario", scenarios(SPEC.slos[0]), ids=lambda s: s.name)
def test_alert_states_agree_with_the_generated_rules(scenario):
    """Minute by minute, the sidecar's page and ticket states match the rules' conditions (as promtool checks)."""
    slo = SPEC.slos[0]
    tracker = SloTracker(SPEC)
    ok = failed = 0.0
    disagreements = []
    for minute in range(-scenario.baseline_min, scenario.length_min + 1):
        now = (minute + scenario.baseline_min) * 60.0
        tracker.observe(scrape(ok, failed), now)
        if minute >= 0:
            state = availability(tracker, now)
            for tier in ("page", "ticket"):
                if state.firing[tier] != alert_condition(slo, scenario, tier, minute):
                    disagreements.append((minute, tier, state.firing[tier]))
        burning = 0 <= minute < scenario.burn_min
        share = scenario.error_ratio if burning else 0.0
        ok += scenario.per_minute * (1 - share)
        failed += scenario.per_minute * share
    # The rules compare at minute boundaries with Prometheus's extrapolation: allow the edges.
    assert len(disagreements) <= 2, disagreements


def test_memory_stays_flat_over_30_days():
    tracker = SloTracker(SPEC)
    ok = failed = 0.0
    sizes = []
    for step in range(31 * 1440):  # a scrape a minute for 31 days
        tracker.observe(scrape(ok, failed), step * 60.0)
        ok, failed = ok + 600, failed + (1 if step % 7 == 0 else 0)
        if step in (5 * 1440, 30 * 1440):
            sizes.append(sum(len(tier.ends) for tracked in tracker.slos for tier in tracked.tiers))
    assert sizes[1] <= sizes[0] * 6 + 100  # the 10-min tier fills up to 31 days; finer tiers stay put
    for tracked in tracker.slos:
        for tier in tracked.tiers:  # each tier holds its span, and at most a trim batch more
            assert len(tier.ends) <= tier.keep_s // tier.bucket_s + 65
    period = window(availability(tracker, (31 * 1440 - 1) * 60.0), "30d")
    assert period.filled and period.error_ratio == pytest.approx(1 / (7 * 600 + 1), rel=0.02)


def test_state_survives_a_restart_but_not_another_spec_or_old_age():
    tracker = SloTracker(SPEC)
    for second in range(0, 601, 10):
        tracker.observe(scrape(second * 10, second // 10), float(second))
    saved = json.loads(dumps(tracker.snapshot()))
    again = SloTracker(SPEC)
    assert again.restore(saved, now=700.0) is None
    assert window(availability(again, 600.0), "5m") == window(availability(tracker, 600.0), "5m")
    again.observe(scrape(7000, 70), 700.0)  # the counters went on while the sidecar was away
    assert window(availability(again, 700.0), "5m").events > 0
    other = load_spec(str(DEFAULT_SPEC)).__class__(**{**SPEC.__dict__, "slos": SPEC.slos[:1]})
    assert SloTracker(other).restore(saved, now=700.0).reason == "other_spec"
    # The longest compliance period is 30 days: 31 days after the last scrape, nothing of it is left.
    assert SloTracker(SPEC).restore(saved, now=600.0 + 31 * 86_400).reason == "too_old"


def test_the_sidecars_slo_series_carry_the_services_identity():
    """model_name comes with the engine's series; namespace is Prometheus's target label, never the sidecar's."""
    from slo_sidecar.sidecar.slo_families import SloCollector

    tracker = SloTracker(SPEC)
    labels = (("code", "200"), ENDPOINT, ("model_name", "tiny-llama"))
    for second, count in ((0, 10.0), (10, 20.0)):
        tracker.observe([Sample("slo_engine_http_requests_total", labels, count)], float(second))
    assert availability(tracker, 10.0).identity == {"model_name": "tiny-llama"}
    families = {family.name: family for family in SloCollector(tracker).collect()}
    ratio = [s for s in families["slo_sli_error_ratio"].samples if s.labels["slo"] == "availability"]
    assert ratio and all(s.labels["model_name"] == "tiny-llama" and "namespace" not in s.labels for s in ratio)
    assert "slo_burn_rate" not in families  # the ratio over the budget: not served twice


TENANTS = load_spec(str(Path(__file__).parent / "fixtures" / "tenants.slo.yaml"))


def tenant_scrape(counts: dict[str, tuple[float, float]]) -> list[Sample]:
    """slo_engine_http_requests_total per tenant: {model: (ok, failed)}."""
    name = "slo_engine_http_requests_total"
    return [Sample(name, (("code", code), ENDPOINT, ("model", model)), value)
            for model, (ok, failed) in counts.items() for code, value in (("200", ok), ("500", failed))]


def test_each_tenant_burns_its_own_budget_and_a_quiet_one_is_guarded():
    """medical: 10 req/s, healthy. legal: 10 req/s, 5% failing (5x its 1% budget, 50x medical's).
    finance (not named: the `other` slice): 3 requests in the hour, 2 failed, a 67% error ratio."""
    tracker = SloTracker(TENANTS)
    counts = {"medical": [0.0, 0.0], "legal": [0.0, 0.0], "finance": [0.0, 0.0]}
    for second in range(0, 3601, 10):
        tracker.observe(tenant_scrape({m: tuple(c) for m, c in counts.items()}), float(second))
        counts["medical"][0] += 100
        counts["legal"][0] += 95
        counts["legal"][1] += 5
        if second in (600, 1800, 3000):
            counts["finance"][0 if second == 600 else 1] += 1
    states = {state.slo.key: state for state in tracker.states(3600.0)}
    legal, medical, other = states["availability/legal"], states["availability/medical"], states["availability/other"]
    assert window(legal, "1h").burn_rate == pytest.approx(5.0)  # 5% over a 1% budget
    assert window(medical, "1h").burn_rate == 0 and medical.firing == {"page": False, "ticket": False}
    # 5x: under the 14.4x and 6x pages, over the 3x ticket (its 1d window judged on the hour there is).
    assert legal.firing == {"page": False, "ticket": True}
    # The other slice: 2 of 3 failed, a burn of 133x, but 3 events are under every guard (the 1h page needs 14).
    assert window(other, "1h").error_ratio == pytest.approx(2 / 3) and window(other, "1h").events == 3
    assert other.firing == {"page": False, "ticket": False}
    # The saved state keeps each slice apart, and is taken up whole.
    saved = json.loads(dumps(tracker.snapshot()))
    assert set(saved["slos"]) == {slo.key for slo in TENANTS.slos}
    restored = SloTracker(TENANTS)
    assert restored.restore(saved, 3600.0) is None
    assert window(next(s for s in restored.states(3600.0) if s.slo.key == "availability/legal"), "1h").burn_rate \
        == pytest.approx(5.0)


def test_the_sidecar_serves_each_slice_with_its_tenant():
    from prometheus_client import CollectorRegistry, generate_latest

    from slo_sidecar.sidecar.slo_families import SloCollector
    from tests.helpers import parse_metrics

    import time

    tracker = SloTracker(TENANTS)
    now = time.time()  # the collector judges at scrape time
    tracker.observe(tenant_scrape({"medical": (10, 0), "legal": (10, 0)}), now - 20)
    tracker.observe(tenant_scrape({"medical": (20, 0), "legal": (15, 5)}), now - 10)
    registry = CollectorRegistry()
    registry.register(SloCollector(tracker))
    samples = parse_metrics(generate_latest(registry).decode())
    objectives = {(dict(labels)["slo"], dict(labels)["model"]): value for (name, labels), value in samples.items()
                  if name == "slo_objective_ratio"}
    assert objectives == {("availability", "medical"): 0.999, ("availability", "legal"): 0.99,
                          ("availability", "other"): 0.995, ("goodput", "medical"): 0.95,
                          ("goodput", "legal"): 0.95, ("goodput", "other"): 0.95}
    burn = {dict(labels)["model"]: value for (name, labels), value in samples.items()
            if name == "slo_sli_error_ratio" and dict(labels)["slo"] == "availability" and dict(labels)["window"] == "5m"}
    assert burn["legal"] == pytest.approx(5 / 10) and burn["medical"] == 0
    # Whether a window is filled is the sidecar's, not an SLO's: one series a window, however many slices.
    filled = [dict(labels) for (name, labels), _ in samples.items() if name == "slo_window_filled"]
    windows = {w.window for state in tracker.states(now) for w in state.windows}
    assert sorted(f["window"] for f in filled) == sorted(windows) and all(set(f) == {"window"} for f in filled)
