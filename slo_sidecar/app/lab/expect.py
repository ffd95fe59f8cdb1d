"""What each alert must do in a lab scenario, from the SRE Workbook's arithmetic, not from the generator.

The tiers below restate the Workbook's multiwindow, multi-burn-rate table for a 30-day SLO (and our
total-outage page and error-rate ticket, as docs/slos.md states them); they are written out here on
purpose, so that a generator that drifted from them shows up as a failed scenario.

For a miss fraction f from onset, lasting D seconds (for ever, in most scenarios), after `history`
seconds of clean traffic, a window of W seconds holds f x (the part of [0, D] within [t - W, t]) missed
events per min(W, history + t) events, t seconds after onset. An alert fires once both its windows'
ratios have exceeded factor x budget (and its long window has held at least its event guard) for its
`for:`.

The error-budget policy reads the period's ratio the same way: the period (30 days) is longer than any
replay, so it holds every event since the replay began. Releases freeze while that ratio leaves less than
`freeze_below_budget` of the budget, and lift when it no longer does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Tier:
    kind: str  # page or ticket
    long_s: int
    short_s: int
    factor: float | None  # of the error budget; None: `ratio` is an error ratio of its own
    hold_s: int  # for:
    ratio: float = 0.0
    min_events: int | None = None  # None: ceil(1 / (factor x budget)), one failure cannot fire it

    def threshold(self, budget: float) -> float:
        return self.factor * budget if self.factor is not None else self.ratio

    def guard(self, budget: float) -> int:
        derived = math.ceil(1 / self.threshold(budget) - 1e-9)
        return max(derived, self.min_events or 0)


# The Workbook's table 5-8 (30-day SLO): 2% of the budget in 1h, 5% in 6h (pages), 10% in 1d and 3d
# (tickets); `for:` 1m on pages and 10m on tickets.
WORKBOOK = (
    Tier("page", 3600, 300, 14.4, 60),
    Tier("page", 6 * 3600, 1800, 6.0, 60),
    Tier("ticket", 86_400, 2 * 3600, 3.0, 600),
    Tier("ticket", 3 * 86_400, 6 * 3600, 1.0, 600),
)
# A total outage: more than half the events failing over 2 minutes and the last one, in 20 or more.
OUTAGE = Tier("page", 120, 60, None, 0, ratio=0.5, min_events=20)
# LLMHighErrorRate: more than 1% of one instance's requests failing over 5 minutes (100 events), for 5m.
ERROR_RATE = Tier("ticket", 300, 300, None, 300, ratio=0.01)


def window_ratio(miss: float, t: float, window_s: float, history_s: float, duration_s: float = math.inf) -> float:
    """The error ratio a window ending t seconds after onset holds."""
    missed_s = max(0.0, min(t, duration_s) - max(0.0, t - window_s))
    return miss * missed_s / min(window_s, history_s + t)


def fires_after(tier: Tier, budget: float, miss: float, rate: float, history_s: float,
                horizon_s: float, duration_s: float = math.inf) -> float | None:
    """Seconds after onset the tier's alert fires, or None within the horizon: the first second from which
    its condition holds through its whole `for:`."""
    threshold, guard = tier.threshold(budget), tier.guard(budget)
    if miss <= threshold:
        return None
    held_since: int | None = None
    for t in range(1, int(horizon_s) + 1):
        if (window_ratio(miss, t, tier.long_s, history_s, duration_s) > threshold
                and window_ratio(miss, t, tier.short_s, history_s, duration_s) > threshold
                and rate * min(tier.long_s, history_s + t) >= guard):
            held_since = t if held_since is None else held_since
            if t - held_since >= tier.hold_s:
                return t
        else:
            held_since = None
    return None


def frozen_between(objective: float, freeze_below_budget: float, period_s: float, miss: float,
                   history_s: float, horizon_s: float, duration_s: float = math.inf
                   ) -> tuple[float | None, float | None]:
    """(seconds after onset releases freeze, and lift) under an SLO's policy; None: not within the horizon."""
    bound = (1 - objective / 100) * (1 - freeze_below_budget)  # the period's ratio that spends that much
    frozen = lifted = None
    for t in range(1, int(horizon_s) + 1):
        spent = window_ratio(miss, t, period_s, history_s, duration_s) > bound
        if spent and frozen is None:
            frozen = t
        elif not spent and frozen is not None:
            lifted = t
            break
    return frozen, lifted


def slo_alerts(alert: str, objective: float, miss: float, rate: float, history_s: float,
               horizon_s: float, duration_s: float = math.inf) -> dict[tuple[str, str], float]:
    """(alert name, tier) -> seconds after onset, for one SLO's burn-rate page and ticket and outage page."""
    budget = 1 - objective / 100
    expected: dict[tuple[str, str], float] = {}
    for tier in WORKBOOK:
        after = fires_after(tier, budget, miss, rate, history_s, horizon_s, duration_s)
        if after is not None:
            key = (alert, tier.kind)
            expected[key] = min(after, expected.get(key, math.inf))
    after = fires_after(OUTAGE, budget, miss, rate, history_s, horizon_s, duration_s)
    if after is not None:
        expected[(alert + "Outage", "page")] = after
    return expected
