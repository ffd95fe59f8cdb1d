"""The replay lab against the real Prometheus and promtool: a burst of errors read through two levels of
recording rules fires the alert, for: later, and the alert ends once the burst leaves the rate window."""

from __future__ import annotations

import time

import pytest

from slo_sidecar.app.lab.replay import Series, replay

RULES = """groups:
- name: errors
  rules:
  - record: job:errors:rate5m
    expr: sum by (job) (rate(errs_total[5m]))
  - record: job:errors:doubled
    expr: job:errors:rate5m * 2
  - alert: ErrorsHigh
    expr: job:errors:doubled > 1
    for: 2m
    labels:
      severity: page
"""
SCRAPE_S = 15
STEP_S = 60


def test_a_burst_fires_for_later_and_ends_when_it_leaves_the_window(tmp_path):
    (tmp_path / "errors.rules.yaml").write_text(RULES)
    # In the recent past, on a whole minute: 1 h flat, 30 min of +60 per scrape (4/s), 30 min flat.
    t0 = int(time.time()) // 60 * 60 - 3 * 3600
    samples = [(t0 + SCRAPE_S * i, 60.0 * min(max(i - 240, 0), 120)) for i in range(481)]
    onset = t0 + 241 * SCRAPE_S  # the first sample of the burst
    last = t0 + 360 * SCRAPE_S  # its last increase
    errors = Series("errs_total", {"job": "engine", "instance": "a:8000"}, "counter", samples)

    replayed = replay([errors], [tmp_path / "errors.rules.yaml"], t0, t0 + 2 * 3600, tmp_path / "lab",
                      step_s=STEP_S, scrape_interval_s=SCRAPE_S, instants=(("job:errors:rate5m", last - 60),))
    firings = replayed.firings
    # Mid-burst the recorded 5m rate is 60 every 15 s: 4 a second.
    [mid] = replayed.values[("job:errors:rate5m", last - 60)]
    assert float(mid["value"][1]) == pytest.approx(4.0)

    # doubled > 1 means rate > 0.5/s: over 5m that is more than 150, so three increases of 60 (rate 180/300
    # = 0.6/s; two give 120 over the 285 s the 20 samples span, 0.42/s). The third comes 30 s after onset.
    # Each increase stays in the window [t - 5m, t] while the sample before it does: the last three until
    # the sample 3 scrapes before the last leaves it, at last - 45 s + 5m = last + 255 s.
    # Both recordings are evaluated at the same instants every STEP_S and the alert every STEP_S from t0,
    # so each edge shows up to two steps late; firing starts `for` (2m) after the expression first holds.
    assert len(firings) == 1, firings
    firing = firings[0]
    assert firing.alert == "ErrorsHigh"
    assert firing.labels == {"job": "engine", "severity": "page"}
    assert onset + 30 + 120 <= firing.start <= onset + 30 + 120 + 2 * STEP_S
    assert firing.end is not None and last + 255 <= firing.end <= last + 255 + 2 * STEP_S


def _firing_intervals(checks: list[tuple[int, str | None]]) -> list[tuple[int, int | None]]:
    """[start, end) minutes of FIRING read off adjacent checks: a check not firing followed a minute
    later by one firing is a start; firing followed by not firing is an end."""
    starts = [later for (before, was), (later, now) in zip(checks, checks[1:])
              if later == before + 1 and was != "firing" and now == "firing"]
    ends = [later for (before, was), (later, now) in zip(checks, checks[1:])
            if later == before + 1 and was == "firing" and now != "firing"]
    return [(start, next((end for end in ends if end > start), None)) for start in starts]


def test_the_replays_state_machine_agrees_with_prometheus_rule_manager(tmp_path):
    """The lab's `for:` state machine over query_range, against promtool's rule manager on the same input:
    tests/test_alert_timing.py's incidents (each a service of its own, one sample a minute), whose
    transitions promtool confirms there to the minute. The replay reads recordings made at their groups'
    own instants, up to one evaluation before its alert's (as a live Prometheus's alert group does), so
    each firing starts and ends at promtool's minute or one later.

    The outage page is left out: its 1-minute window holds two samples a minute apart only at the
    sample instants themselves (promtool evaluates there); a group evaluating between them, as every live
    group with 1-minute scrapes does, finds one sample and no rate (docs/slos.md asks for scrapes of 30 s
    or less for that page)."""
    from tests.test_alert_timing import INCIDENTS, ONSET, RULES, SELECTION

    t0 = int(time.time()) // 3600 * 3600 - 24 * 3600
    last = ONSET + max(m for incident in INCIDENTS for checks in incident.states.values() for m, _ in checks) + 2
    metric, labels = SELECTION.split("{")
    base = dict(pair.split("=") for pair in labels.split(","))
    series = []
    for number, incident in enumerate(INCIDENTS):
        bad = good = 0.0
        samples_bad, samples_good = [], []
        for minute in range(last + 1):
            if minute:
                bad += incident.per_minute * incident.ratio(minute)
                good += incident.per_minute * (1 - incident.ratio(minute))
            samples_bad.append((t0 + 60 * minute, bad))
            samples_good.append((t0 + 60 * minute, good))
        service = {key: value.strip('"') for key, value in base.items()} | {"namespace": f"incident{number}"}
        series += [Series(metric, {**service, "code": "500"}, "counter", samples_bad),
                   Series(metric, {**service, "code": "200"}, "counter", samples_good)]
    replayed = replay(series, [RULES], t0, t0 + 60 * last, tmp_path / "lab", step_s=60, scrape_interval_s=60)
    for number, incident in enumerate(INCIDENTS):
        for (alert, tier), checks in incident.states.items():
            if alert.endswith("Outage"):
                continue
            got = [((f.start - t0) / 60 - ONSET, None if f.end is None else (f.end - t0) / 60 - ONSET)
                   for f in replayed.firings if f.alert == alert and f.labels.get("tier") == tier
                   and f.labels.get("namespace") == f"incident{number}"]
            want = _firing_intervals(checks)
            assert len(got) == len(want), (incident.name, alert, tier, got, want)
            for (start, end), (want_start, want_end) in zip(got, want):
                assert start - want_start in (0, 1), (incident.name, alert, tier, got, want)
                if want_end is not None:
                    assert end is not None and end - want_end in (0, 1), (incident.name, alert, tier, got, want)
