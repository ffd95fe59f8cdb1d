"""The lab's expectations (slo_sidecar/app/lab/expect.py) against the SRE Workbook's published arithmetic.

Each expected figure is worked out here from first principles, beside its numbers, for a 99.9% objective
over 30 days (error budget 0.1%) with full windows of clean history before the onset:

- a window of W seconds, t seconds into a steady miss fraction m (t <= W), holds m * t / W;
- a tier (long window W, short window w < W, burn factor f) fires once both hold more than f * budget:
  the long window is the later, at t = f * budget * W / m (the first whole second past it, as the lab
  steps in seconds), then its `for:`;
- by then the incident has spent m * t / (budget * period) of the budget, f * W / period at detection.

The tiers are the Workbook's table 5-8 (1h/5m at 14.4x, 6h/30m at 6x, 3d/6h at 1x) and Sloth's added
1d/2h at 3x. A total outage (m = 1) crosses 14.4x on the hour window after 51.84 s: 2% of the budget.
"""

from __future__ import annotations

import math

import pytest

from slo_sidecar.app.lab.expect import ERROR_RATE, OUTAGE, WORKBOOK, fires_after, frozen_between, window_ratio

BUDGET = 0.001  # 99.9%
PERIOD_S = 30 * 86_400
HISTORY_S = 4 * 86_400  # longer than the longest window: every window starts full of clean traffic
RATE = 10.0  # requests a second: far above every tier's event guard
OUTAGE_MISS, TEN_X_MISS = 1.0, 10 * BUDGET

# (long s, short s, factor, for: s) -> (outage detection s, budget %, 10x burn detection s or None, budget %)
PUBLISHED = {
    (3600, 300, 14.4, 60): (14.4 * 0.001 * 3600 / 1.0, 2.0, None, None),  # 51.84 s; 10x < 14.4x: never
    (21_600, 1800, 6.0, 60): (6 * 0.001 * 21_600 / 1.0, 5.0, 6 * 0.001 * 21_600 / 0.01, 5.0),  # 129.6 s; 3.6 h
    (86_400, 7200, 3.0, 600): (3 * 0.001 * 86_400 / 1.0, 10.0, 3 * 0.001 * 86_400 / 0.01, 10.0),  # 259.2 s; 7.2 h
    (259_200, 21_600, 1.0, 600): (1 * 0.001 * 259_200 / 1.0, 10.0, 1 * 0.001 * 259_200 / 0.01, 10.0),  # the same
}


def first_second_past(seconds: float) -> int:
    return math.floor(seconds) + 1


def test_the_tiers_are_the_workbooks_and_sloths():
    assert {(tier.long_s, tier.short_s, tier.factor, tier.hold_s) for tier in WORKBOOK} == set(PUBLISHED)
    assert [tier.kind for tier in WORKBOOK] == ["page", "page", "ticket", "ticket"]


@pytest.mark.parametrize("tier", WORKBOOK, ids=lambda tier: f"{tier.long_s}s-at-{tier.factor}x")
def test_a_total_outage_is_detected_when_the_arithmetic_says(tier):
    detected_s, budget_pct, _, _ = PUBLISHED[(tier.long_s, tier.short_s, tier.factor, tier.hold_s)]
    fired = fires_after(tier, BUDGET, OUTAGE_MISS, RATE, HISTORY_S, horizon_s=2 * 86_400)
    assert fired == first_second_past(detected_s) + tier.hold_s
    assert OUTAGE_MISS * detected_s / (BUDGET * PERIOD_S) * 100 == pytest.approx(budget_pct)


@pytest.mark.parametrize("tier", WORKBOOK, ids=lambda tier: f"{tier.long_s}s-at-{tier.factor}x")
def test_a_10x_burn_is_detected_when_the_arithmetic_says_or_never(tier):
    _, _, detected_s, budget_pct = PUBLISHED[(tier.long_s, tier.short_s, tier.factor, tier.hold_s)]
    fired = fires_after(tier, BUDGET, TEN_X_MISS, RATE, HISTORY_S, horizon_s=2 * 86_400)
    if detected_s is None:
        assert fired is None
        return
    assert fired == first_second_past(detected_s) + tier.hold_s
    assert TEN_X_MISS * detected_s / (BUDGET * PERIOD_S) * 100 == pytest.approx(budget_pct)


def test_a_window_holds_the_miss_fraction_times_the_share_of_it_since_the_onset():
    assert window_ratio(1.0, 30, 3600, HISTORY_S) == 30 / 3600
    assert window_ratio(0.01, 7200, 3600, HISTORY_S) == 0.01  # the whole window is past the onset
    assert window_ratio(1.0, 30, 3600, history_s=30) == 0.5  # half the window was there before the onset


def test_the_outage_page_needs_half_the_events_failing_over_2_minutes_and_20_of_them():
    # m = 1: the 1-minute window crosses 50% after 30 s, the 2-minute one after 60 s; no `for:`.
    assert fires_after(OUTAGE, BUDGET, 1.0, RATE, HISTORY_S, horizon_s=600) == first_second_past(0.5 * 120)
    # At 0.1 request a second the 2-minute window holds 12 events: under the guard of 20, never a page.
    assert fires_after(OUTAGE, BUDGET, 1.0, 0.1, HISTORY_S, horizon_s=600) is None
    assert fires_after(OUTAGE, BUDGET, 0.5, RATE, HISTORY_S, horizon_s=600) is None  # not more than half


def test_a_pulse_fires_only_where_its_condition_holds_through_the_for():
    """10% failing for D seconds at 2 requests a second, long clean history; LLMHighErrorRate: over 1% of the
    last 5 minutes (300 s, 600 events: past its 100-event guard), `for: 5m`. The window holds 0.1 x s / 300,
    s the seconds of the pulse in it: over 1% while s > 30, i.e. from t = 31 until t - 300 reaches D - 30.
    D = 180: held from 31 to 450, fires at 31 + 300 = 331. D = 60: held from 31 to 330, 299 s, never fires.
    D = 20: the window never holds more than 0.67%."""
    assert window_ratio(0.1, 400, 300, 7200, duration_s=180) == pytest.approx(0.1 * 80 / 300)  # [100, 400]
    assert fires_after(ERROR_RATE, 1.0, 0.1, 2.0, 7200, 21600, duration_s=180) == 331
    assert fires_after(ERROR_RATE, 1.0, 0.1, 2.0, 7200, 21600, duration_s=60) is None
    assert fires_after(ERROR_RATE, 1.0, 0.1, 2.0, 7200, 21600, duration_s=20) is None


def test_releases_freeze_when_the_period_is_spent_and_lift_when_diluted():
    """The period (30 days) holds every event since the replay began (2 hours clean, then 10% failing for
    180 s at 2/s: 36 failures). At 99.9%, with freeze_below_budget 0 (frozen once the ratio passes 0.001):
    0.1 t / (7200 + t) > 0.001 from t > 72.7 (73); 18 / (7200 + t) falls under 0.001 past t = 10800 (10801).
    At 0.5 (frozen past 0.0005): from t > 36.2 (37), and the lift needs t > 28800, beyond a 6-hour horizon."""
    assert frozen_between(99.9, 0.0, PERIOD_S, 0.1, 7200, 21600, duration_s=180) == (73, 10801)
    assert frozen_between(99.9, 0.5, PERIOD_S, 0.1, 7200, 21600, duration_s=180) == (37, None)
    assert frozen_between(99.9, 0.0, PERIOD_S, 0.0005, 7200, 21600) == (None, None)  # a burn of 0.5 never
