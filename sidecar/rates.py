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
from collections import deque
from dataclasses import dataclass, field


@dataclass
class CounterSeries:
    """One counter's reset-adjusted history over the longest window asked of it."""

    horizon_s: float
    _points: deque[tuple[float, float]] = field(default_factory=deque)  # (time, adjusted value)
    _last_raw: float | None = None
    _offset: float = 0.0

    def observe(self, t: float, raw: float, restarted: bool = False) -> None:
        if self._last_raw is not None and (restarted or raw < self._last_raw):
            self._offset += self._last_raw  # it began again at zero
        self._last_raw = raw
        self._points.append((t, raw + self._offset))
        while len(self._points) > 2 and self._points[1][0] <= t - self.horizon_s:
            self._points.popleft()

    def _span(self, window_s: float, now: float) -> tuple[tuple[float, float], tuple[float, float]] | None:
        """(first, last) points of the window: the newest point at or before its start anchors it."""
        if len(self._points) < 2:
            return None
        start = now - window_s
        base = self._points[0]
        for point in self._points:
            if point[0] > start:
                break
            base = point
        last = self._points[-1]
        return (base, last) if last[0] > base[0] else None

    def increase(self, window_s: float, now: float) -> float | None:
        """Increase over the window; None until two points cover some of it."""
        span = self._span(window_s, now)
        return None if span is None else span[1][1] - span[0][1]

    def rate(self, window_s: float, now: float) -> float | None:
        """Per-second rate over the covered part of the window (no extrapolation past the data)."""
        span = self._span(window_s, now)
        return None if span is None else (span[1][1] - span[0][1]) / (span[1][0] - span[0][0])


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
