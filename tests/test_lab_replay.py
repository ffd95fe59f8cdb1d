"""The replay lab against the real Prometheus and promtool: a burst of errors read through two levels of
recording rules fires the alert, for: later, and the alert ends once the burst leaves the rate window."""

from __future__ import annotations

import time

import pytest

from slo_sidecar.lab.replay import Series, replay

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
