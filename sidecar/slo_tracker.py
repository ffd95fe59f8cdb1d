"""Live SLIs, burn rates, error budgets and alert states in the sidecar, from the same spec as the rules.

Pure code: feed each scrape's samples with its wall-clock time, read a snapshot.
Memory does not grow with the window: events are kept as cumulative counts at
bucket ends, in tiers whose buckets lengthen with the window they serve (10 s
buckets for two hours, 1 min for a day, 10 min for 31 days), and a window's
count is the difference of two interpolated cumulative counts. Counter
increases follow Prometheus per series: a reset counts the new value, a series
seen for the first time counts nothing yet. A window reaching back before the
first observation is reported as not filled.
"""

from __future__ import annotations

import hashlib
import json
import math
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

from slo_spec.model import EventSum, Selection, Slo, Spec, duration_label

from .exposition import Labels, Sample

# (bucket seconds, seconds kept): each tier serves the windows up to its span.
TIERS = ((10, 2 * 3600 + 600), (60, 26 * 3600), (600, 31 * 86_400 + 3600))
TRIM_ROWS = 64


@dataclass
class CumulativeTier:
    """Cumulative (errors, total) at the end of each bucket with events, oldest first."""

    bucket_s: int
    keep_s: int
    ends: list[int] = field(default_factory=list)  # bucket index
    errors: list[float] = field(default_factory=list)
    totals: list[float] = field(default_factory=list)

    def record(self, t: float, errors: float, total: float) -> None:
        # What a scrape at t reports happened before t: it closes the bucket ending at t.
        index = math.ceil(t / self.bucket_s) - 1
        if self.ends and self.ends[-1] == index:
            self.errors[-1], self.totals[-1] = errors, total
        else:
            self.ends.append(index)
            self.errors.append(errors)
            self.totals.append(total)
        dead = bisect_right(self.ends, index - self.keep_s // self.bucket_s) - 1
        if dead >= TRIM_ROWS:  # trim in small batches: memory stays within TRIM_ROWS of the window
            del self.ends[:dead], self.errors[:dead], self.totals[:dead]

    def at(self, t: float) -> tuple[float, float] | None:
        """Cumulative counts at time t, interpolated inside its bucket; None before the first bucket."""
        position = t / self.bucket_s
        index = math.floor(position)
        i = bisect_right(self.ends, index) - 1  # the bucket holding t, or the last one before it
        if i < 0:
            return None
        if self.ends[i] != index:  # no events in t's bucket: the count stood still since bucket i
            return self.errors[i], self.totals[i]
        before = (self.errors[i - 1], self.totals[i - 1]) if i > 0 else (self.errors[i], self.totals[i])
        share = position - index
        return (before[0] + (self.errors[i] - before[0]) * share, before[1] + (self.totals[i] - before[1]) * share)


@dataclass
class TermSeries:
    """One counter selection's series, for Prometheus-style increases."""

    selection: Selection
    last: dict[Labels, float] = field(default_factory=dict)
    matches: dict[Labels, bool] = field(default_factory=dict)

    def increase(self, samples: list[Sample], restarted: bool) -> float:
        if not samples:  # another process's counters were observed (the engine's, or the probe's)
            return 0.0
        increase, seen = 0.0, {}
        for sample in samples:
            wanted = self.matches.get(sample.labels)
            if wanted is None:
                if len(self.matches) > 10_000:
                    self.matches.clear()
                wanted = self.matches[sample.labels] = self.selection.matches(dict(sample.labels))
            if not wanted:
                continue
            seen[sample.labels] = value = seen.get(sample.labels, 0.0) + sample.value
            previous = self.last.get(sample.labels)
            if previous is not None:
                increase += value if (restarted or value < previous) else value - previous
        self.last = seen
        return increase


@dataclass
class SloWindow:
    window: str
    seconds: int
    filled: bool
    error_ratio: float | None  # None before the SLI's series are seen; 0 with them but no events
    burn_rate: float | None
    events: float


@dataclass
class SloState:
    slo: Slo
    windows: list[SloWindow]
    budget_remaining: float | None  # over the period: 1 - period burn rate
    firing: dict[str, bool]  # tier -> the burn-rate condition holds
    identity: dict[str, str] = field(default_factory=dict)  # the service's identity labels on its series


@dataclass
class TrackedSlo:
    slo: Slo
    errors: list[tuple[int, TermSeries]]
    totals: list[tuple[int, TermSeries]]
    tiers: list[CumulativeTier] = field(default_factory=lambda: [CumulativeTier(b, k) for b, k in TIERS])
    cumulative: list[float] = field(default_factory=lambda: [0.0, 0.0])  # errors, total

    def __post_init__(self) -> None:
        # Worked out once: states() runs at every scrape of the sidecar.
        self.windows = [(seconds, duration_label(seconds)) for seconds in self.slo.windows()]
        self.alerts = {tier: [a for a in self.slo.burn_alerts() if a.tier == tier]
                       for tier in ("page", "ticket") if getattr(self.slo, tier).enabled}

    def observe(self, by_name: dict[str, list[Sample]], t: float, restarted: bool) -> None:
        errors, total = _increase(self.errors, by_name, restarted), _increase(self.totals, by_name, restarted)
        self.cumulative[0] += max(0.0, errors)
        self.cumulative[1] += max(0.0, total)
        for tier in self.tiers:
            tier.record(t, *self.cumulative)

    def identity(self, labels: tuple[str, ...]) -> dict[str, str]:
        """The identity labels the SLI's series carry (model_name from the engine; namespace is a target
        label Prometheus adds to the sidecar's series too). One sidecar watches one engine: one service."""
        for _, term in self.totals:
            for series in term.last:
                found = dict(series)
                return {label: found[label] for label in labels if label in found}
        return {}

    def window(self, now: float, seconds: int) -> tuple[float, float]:
        """(errors, total) in the window ending now, from the finest tier that reaches back far enough."""
        tier = next((tier for tier in self.tiers if tier.keep_s >= seconds), self.tiers[-1])
        start = tier.at(now - seconds) or (0.0, 0.0)
        end = self.cumulative
        return end[0] - start[0], end[1] - start[1]


def _increase(terms: list[tuple[int, TermSeries]], by_name: dict[str, list[Sample]], restarted: bool) -> float:
    return sum(sign * term.increase(by_name.get(term.selection.metric, []), restarted) for sign, term in terms)


def _terms(events: EventSum) -> list[tuple[int, TermSeries]]:
    return [(sign, TermSeries(selection)) for sign, selection in events.terms]


def spec_fingerprint(spec: Spec) -> str:
    """Changes whenever an SLO's definition does: saved state from another spec is not reused."""
    text = repr([(s.name, s.objective, s.period, s.sli.errors, s.sli.total) for s in spec.slos])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class SloTracker:
    def __init__(self, spec: Spec):
        self.spec = spec
        self.slos = [TrackedSlo(slo, _terms(slo.sli.errors), _terms(slo.sli.total))
                     for slo in spec.slos if slo.sli.errors is not None and slo.sli.total is not None]
        self.metrics = sorted({term.selection.metric for tracked in self.slos
                               for _, term in (*tracked.errors, *tracked.totals)})
        self._wanted = frozenset(self.metrics)
        self.first_seen: float | None = None
        self.last_seen: float | None = None
        self._start_time: float | None = None

    def observe(self, samples: list[Sample], t: float, process_start_time: float | None = None) -> None:
        restarted = (process_start_time is not None and self._start_time is not None
                     and process_start_time != self._start_time)
        if process_start_time is not None:
            self._start_time = process_start_time
        by_name: dict[str, list[Sample]] = {}
        wanted = self._wanted
        for sample in samples:
            if sample.name in wanted:
                by_name.setdefault(sample.name, []).append(sample)
        for tracked in self.slos:
            tracked.observe(by_name, t, restarted)
        if self.first_seen is None:
            self.first_seen = t
        self.last_seen = t

    def service_identity(self) -> dict[str, str] | None:
        """The identity labels of the service the engine's series name; None until the engine is seen."""
        if self.first_seen is None:
            return None
        return next((found for tracked in self.slos if (found := tracked.identity(self.spec.identity))), {})

    def recent_rate(self, metric: str, now: float, seconds: int = 3600) -> float:
        """Events per second over the last hour (or since first seen) of the first SLI counting `metric`."""
        covered = min(seconds, now - self.first_seen) if self.first_seen is not None else 0
        tracked = next((t for t in self.slos if any(term.selection.metric == metric for _, term in t.totals)), None)
        if tracked is None or covered <= 0:
            return 0.0
        return tracked.window(now, seconds)[1] / covered

    def states(self, now: float) -> list[SloState]:
        states = []
        for tracked in self.slos:
            slo, budget = tracked.slo, tracked.slo.error_budget
            windows = []
            seen = any(term.last for _, term in tracked.totals)  # the SLI's series exist
            for seconds, label in tracked.windows:
                errors, total = tracked.window(now, seconds)
                # No events: nothing failed, nothing of the budget spent (as the rules read it).
                ratio = errors / total if total > 0 else (0.0 if seen else None)
                filled = self.first_seen is not None and now - seconds >= self.first_seen
                windows.append(SloWindow(label, seconds, filled, ratio, None if ratio is None else ratio / budget,
                                         total))
            by_seconds = {w.seconds: w for w in windows}
            period = by_seconds[slo.period_s]
            firing = {tier: any(_over(by_seconds[a.long_s], a.factor * budget, a.min_events)
                                and _over(by_seconds[a.short_s], a.factor * budget, 0) for a in alerts)
                      for tier, alerts in tracked.alerts.items()}
            remaining = None if period.burn_rate is None else 1 - period.burn_rate
            states.append(SloState(slo, windows, remaining, firing, tracked.identity(self.spec.identity)))
        return states

    # --- surviving a restart ------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "fingerprint": spec_fingerprint(self.spec), "first_seen": self.first_seen,
            "last_seen": self.last_seen, "start_time": self._start_time,
            "slos": {tracked.slo.name: {
                "cumulative": tracked.cumulative,
                "tiers": [[tier.ends, tier.errors, tier.totals] for tier in tracked.tiers],
                "series": [[[list(map(list, labels)), value] for labels, value in term.last.items()]
                           for _, term in (*tracked.errors, *tracked.totals)],
            } for tracked in self.slos},
        }

    def restore(self, saved: dict[str, Any], now: float) -> str | None:
        """Take up a snapshot; None if taken, else why it was discarded."""
        if saved.get("fingerprint") != spec_fingerprint(self.spec):
            return "it was written for another SLO spec"
        last_seen = saved.get("last_seen")
        longest = max((tracked.slo.period_s for tracked in self.slos), default=0)
        if not isinstance(last_seen, (int, float)) or now - last_seen > longest:
            return "it is older than the longest compliance period"
        for tracked in self.slos:
            state = saved["slos"].get(tracked.slo.name)
            if state is None:
                continue
            tracked.cumulative = [float(v) for v in state["cumulative"]]
            for tier, (ends, errors, totals) in zip(tracked.tiers, state["tiers"]):
                tier.ends, tier.errors, tier.totals = list(ends), list(errors), list(totals)
            for (_, term), series in zip((*tracked.errors, *tracked.totals), state["series"]):
                term.last = {tuple(tuple(pair) for pair in labels): value for labels, value in series}
        self.first_seen, self.last_seen = saved.get("first_seen"), last_seen
        self._start_time = saved.get("start_time")
        return None


def _over(window: SloWindow, threshold: float, min_events: int) -> bool:
    return window.error_ratio is not None and window.error_ratio > threshold and window.events >= min_events


def dumps(snapshot: dict[str, Any]) -> str:
    return json.dumps(snapshot, separators=(",", ":"))
