"""Rates and quantiles from scraped counters and histograms, as Prometheus computes them.

Pure code over (time, value) points: the engine collector feeds scrapes in, and
reads per-second rates and quantile estimates out.

Counter resets (an engine restart) follow Prometheus's rule: a counter that went
down started again from zero, so the increase across the reset is the new value,
never a negative or a huge number. The sidecar also resets explicitly when the
engine's process start time changes, which catches a restart that has already
counted past the old value.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field


@dataclass
class CounterSeries:
    """One counter's reset-adjusted history over the longest window asked of it.

    Times and values sit in two lists searched by bisection: the sidecar keeps a
    series per histogram bucket and asks each for its window every cycle.
    """

    horizon_s: float
    _times: list[float] = field(default_factory=list)
    _values: list[float] = field(default_factory=list)  # reset-adjusted
    _last_raw: float | None = None
    _offset: float = 0.0

    def observe(self, t: float, raw: float, restarted: bool = False) -> None:
        if self._last_raw is not None and (restarted or raw < self._last_raw):
            self._offset += self._last_raw  # it began again at zero
        self._last_raw = raw
        self._times.append(t)
        self._values.append(raw + self._offset)
        # Keep the newest point at or before the horizon (it anchors the longest window) and all
        # after it; trim only once half the list is dead, so trimming costs O(1) amortised.
        dead = bisect_right(self._times, t - self.horizon_s) - 1
        if dead > 0 and dead >= len(self._times) // 2:
            del self._times[:dead]
            del self._values[:dead]

    def _span(self, window_s: float, now: float) -> tuple[int, int] | None:
        """Indexes of the window's first and last points: the newest point at or before its start anchors it."""
        if len(self._times) < 2:
            return None
        first = max(0, bisect_right(self._times, now - window_s) - 1)
        last = len(self._times) - 1
        return (first, last) if self._times[last] > self._times[first] else None

    def increase(self, window_s: float, now: float) -> float | None:
        """Increase over the window; None until two points cover some of it."""
        span = self._span(window_s, now)
        return None if span is None else self._values[span[1]] - self._values[span[0]]

    def rate(self, window_s: float, now: float) -> float | None:
        """Per-second rate over the covered part of the window (no extrapolation past the data)."""
        span = self._span(window_s, now)
        if span is None:
            return None
        first, last = span
        return (self._values[last] - self._values[first]) / (self._times[last] - self._times[first])


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
