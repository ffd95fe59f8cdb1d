"""Rates and quantiles from scraped counters and histograms, as Prometheus computes them.

Pure code over (time, values) points: the engine collector feeds scrapes in, and
reads increases, per-second rates and quantile estimates out.

Counter resets (an engine restart) follow Prometheus's rule: a counter that went
down started again from zero, so the increase across the reset is the new value,
never a negative or a huge number. The sidecar also resets explicitly when the
engine's process start time changes, which catches a restart that has already
counted past the old value.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from operator import add, ge, sub
from dataclasses import dataclass, field


@dataclass
class CounterVector:
    """The reset-adjusted history of a fixed list of counters scraped together, over the longest window asked.

    One vector per scrape instead of one series per counter: the engine's
    histograms alone are ~90 bucket counters, and this is asked for all of them
    every cycle. Each element follows Prometheus's reset rule on its own. Times
    and rows sit in two lists searched by bisection.
    """

    horizon_s: float
    _times: list[float] = field(default_factory=list)
    _rows: list[list[float]] = field(default_factory=list)  # reset-adjusted
    _last_raw: list[float] | None = None
    _offset: list[float] | None = None

    def observe(self, t: float, raw: list[float], restarted: bool = False) -> None:
        last, offset = self._last_raw, self._offset
        if last is None or offset is None:
            offset = [0.0] * len(raw)
        elif restarted:  # every counter began again at zero, whatever its value now
            offset = list(map(add, offset, last))
        elif not all(map(ge, raw, last)):  # a counter that went down began again at zero
            offset = [o + old if new < old else o for o, old, new in zip(offset, last, raw)]
        self._last_raw, self._offset = raw, offset
        # Map, not a loop in Python: this runs for every counter of every scrape.
        self._rows.append(list(map(add, raw, offset)))
        self._times.append(t)
        # Keep the newest point at or before the horizon (it anchors the longest window) and all
        # after it; trim only once half the list is dead, so trimming costs O(1) amortised.
        dead = bisect_right(self._times, t - self.horizon_s) - 1
        if dead > 0 and dead >= len(self._times) // 2:
            del self._times[:dead]
            del self._rows[:dead]

    def _span(self, window_s: float, now: float) -> tuple[int, int] | None:
        """Indexes of the window's first and last points: the newest point at or before its start anchors it."""
        if len(self._times) < 2:
            return None
        first = max(0, bisect_right(self._times, now - window_s) - 1)
        last = len(self._times) - 1
        return (first, last) if self._times[last] > self._times[first] else None

    def increase(self, window_s: float, now: float) -> list[float] | None:
        """Each counter's increase over the window; None until two points cover some of it."""
        span = self._span(window_s, now)
        if span is None:
            return None
        return list(map(sub, self._rows[span[1]], self._rows[span[0]]))

    def covered_s(self, window_s: float, now: float) -> float | None:
        """How much of the window the points cover: rates divide by this (no extrapolation past the data)."""
        span = self._span(window_s, now)
        return None if span is None else self._times[span[1]] - self._times[span[0]]


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's histogram_quantile over (upper bound, cumulative count) pairs, sorted, +Inf last.

    NaN when there are no observations; the highest finite bound when the rank falls in +Inf.
    """
    if not buckets or not 0 <= q <= 1:
        return math.nan
    total = buckets[-1][1]
    if total <= 0 or not math.isinf(buckets[-1][0]):
        return math.nan
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for upper_bound, count in buckets:
        if count >= rank:
            if math.isinf(upper_bound):
                return lower_bound
            if upper_bound <= 0:
                return upper_bound
            in_bucket = count - lower_count
            if in_bucket <= 0:
                return upper_bound
            return lower_bound + (upper_bound - lower_bound) * (rank - lower_count) / in_bucket
        lower_bound, lower_count = upper_bound, count
    return lower_bound
