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
from typing import Any, NamedTuple

from slo_sidecar.spec.model import EventSum, Selection, Slo, Spec, counter_increase, duration_label

from .engine_snapshot import EngineSnapshot
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
            if not wanted or not math.isfinite(sample.value):  # NaN or Inf: no count to take a difference of
                continue
            seen[sample.labels] = value = seen.get(sample.labels, 0.0) + sample.value
            previous = self.last.get(sample.labels)
            if previous is not None:
                increase += counter_increase(previous, value, restarted)
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
        self.cumulative[0] += _counted(errors)
        self.cumulative[1] += _counted(total)
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


def _counted(increase: float) -> float:
    """An increase as the cumulative counts take it: never negative, never infinite or NaN, which would
    stay in every window for good (and make the saved state one that restore() refuses)."""
    return increase if 0.0 < increase < math.inf else 0.0


def _increase(terms: list[tuple[int, TermSeries]], by_name: dict[str, list[Sample]], restarted: bool) -> float:
    return sum(sign * term.increase(by_name.get(term.selection.metric, []), restarted) for sign, term in terms)


def _terms(events: EventSum) -> list[tuple[int, TermSeries]]:
    return [(sign, TermSeries(selection)) for sign, selection in events.terms]


def spec_fingerprint(spec: Spec) -> str:
    """Changes whenever an SLO's definition does: saved state from another spec is not reused."""
    text = repr([(s.key, s.objective, s.period, s.sli.errors, s.sli.total) for s in spec.slos])
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
        self.engine_start_time: float | None = None  # the engine's process start time, last seen

    def take(self, snapshot: EngineSnapshot) -> None:
        """An engine snapshot (engine_poller.SnapshotConsumer): its SLI series, at its wall-clock time."""
        self.observe(snapshot.scrape.samples(self.metrics), snapshot.wall_time, snapshot.process_start_time, snapshot.restarted)

    def clear(self) -> None:
        """Nothing to withdraw after a failed take: the windows are history, and the scrape added nothing."""

    def observe(self, samples: list[Sample], t: float, process_start_time: float | None = None,
                restarted: bool = False) -> None:
        """`restarted`: every counter began again at zero (the snapshot builder tells); the engine's
        process start time is kept for the state file, so a restart while the sidecar was down is seen."""
        if process_start_time is not None:
            self.engine_start_time = process_start_time
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
            "last_seen": self.last_seen, "start_time": self.engine_start_time,
            "slos": {tracked.slo.key: {
                "cumulative": tracked.cumulative,
                "tiers": [[tier.ends, tier.errors, tier.totals] for tier in tracked.tiers],
                "series": [[[list(map(list, labels)), value] for labels, value in term.last.items()]
                           for _, term in (*tracked.errors, *tracked.totals)],
            } for tracked in self.slos},
        }

    def restore(self, saved: Any, now: float) -> Discarded | None:
        """Take up a snapshot whole, or leave the tracker exactly as it was; None if taken, else why not.

        Everything is checked and built before anything changes: a file cut short, edited by
        hand or written by another program can neither raise here nor leave half a state behind.
        """
        if not isinstance(saved, dict) or not isinstance(saved.get("fingerprint"), str):
            return Discarded("malformed", "it is not an SLO state (a JSON object with a fingerprint)")
        if saved["fingerprint"] != spec_fingerprint(self.spec):
            return Discarded("other_spec", "it was written for another SLO spec")
        try:
            restored = _read_state(saved, self.slos)
        except _Malformed as exc:
            return Discarded("malformed", str(exc))
        longest = max((tracked.slo.period_s for tracked in self.slos), default=0)
        if restored.last_seen is not None and now - restored.last_seen > longest:
            return Discarded("too_old", "it is older than the longest compliance period")
        for tracked, (cumulative, tiers, series) in zip(self.slos, restored.slos):
            tracked.cumulative, tracked.tiers = cumulative, tiers
            for (_, term), last in zip((*tracked.errors, *tracked.totals), series):
                term.last = last
        self.first_seen, self.last_seen, self.engine_start_time = restored.first_seen, restored.last_seen, restored.start_time
        return None


# Why a saved state was not taken up: bounded label values of sidecar_slo_state_discarded_total.
DISCARD_REASONS = ("unreadable", "malformed", "other_spec", "too_old")


class Discarded(NamedTuple):
    reason: str  # one of DISCARD_REASONS
    detail: str  # for the log


class _Malformed(Exception):
    """A snapshot whose shape or values are not what snapshot() writes."""


@dataclass
class _State:
    """A snapshot, checked and converted, ready to be put in place at once."""

    first_seen: float | None
    last_seen: float | None
    start_time: float | None
    slos: list[tuple[list[float], list[CumulativeTier], list[dict[Labels, float]]]]  # in the tracker's order


def _read_state(saved: dict[str, Any], slos: list[TrackedSlo]) -> _State:
    missing = {"first_seen", "last_seen", "start_time", "slos"} - saved.keys()
    if missing:
        raise _Malformed(f"{', '.join(sorted(missing))} missing")
    first_seen, last_seen = _time(saved["first_seen"], "first_seen"), _time(saved["last_seen"], "last_seen")
    if (first_seen is None) != (last_seen is None):
        raise _Malformed("first_seen and last_seen: one is set without the other")
    states = saved["slos"]
    if not isinstance(states, dict) or set(states) != {tracked.slo.key for tracked in slos}:
        raise _Malformed("slos: expected an object with one entry per SLO the sidecar evaluates")
    return _State(first_seen, last_seen, _time(saved["start_time"], "start_time"),
                  [_read_slo(states[tracked.slo.key], tracked, f"slos.{tracked.slo.key}") for tracked in slos])


def _read_slo(state: Any, tracked: TrackedSlo, where: str
              ) -> tuple[list[float], list[CumulativeTier], list[dict[Labels, float]]]:
    if not isinstance(state, dict):
        raise _Malformed(f"{where}: expected an object")
    cumulative = _counts(state.get("cumulative"), f"{where}.cumulative", length=2)
    saved_tiers = _list(state.get("tiers"), f"{where}.tiers", len(tracked.tiers))
    tiers = [_read_tier(saved, tier, f"{where}.tiers[{i}]")
             for i, (saved, tier) in enumerate(zip(saved_tiers, tracked.tiers))]
    terms = len(tracked.errors) + len(tracked.totals)
    series = [_read_series(saved, f"{where}.series[{i}]")
              for i, saved in enumerate(_list(state.get("series"), f"{where}.series", terms))]
    return cumulative, tiers, series


def _read_tier(saved: Any, tier: CumulativeTier, where: str) -> CumulativeTier:
    ends, errors, totals = _list(saved, where, 3)
    ends = _list(ends, f"{where}[0]")
    if not all(type(end) is int for end in ends):  # bucket indices; a bool is not one
        raise _Malformed(f"{where}[0]: expected integers")
    errors, totals = _counts(errors, f"{where}[1]", len(ends)), _counts(totals, f"{where}[2]", len(ends))
    return CumulativeTier(tier.bucket_s, tier.keep_s, list(ends), errors, totals)


def _read_series(saved: Any, where: str) -> dict[Labels, float]:
    series: dict[Labels, float] = {}
    for entry in _list(saved, where):
        labels, value = _list(entry, where, 2)
        pairs = _list(labels, where)
        if not all(isinstance(pair, list) and len(pair) == 2 and type(pair[0]) is str and type(pair[1]) is str
                   for pair in pairs):
            raise _Malformed(f"{where}: expected label sets as [name, value] pairs of strings")
        series[tuple((name, label) for name, label in pairs)] = _number(value, where)
    return series


def _list(value: Any, where: str, length: int | None = None) -> list:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        raise _Malformed(f"{where}: expected a list" + ("" if length is None else f" of {length}"))
    return value


def _number(value: Any, where: str) -> float:
    """A finite float from a JSON number (an int or a float, not a bool)."""
    if type(value) not in (int, float):
        raise _Malformed(f"{where}: expected a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # an integer past the float range
        raise _Malformed(f"{where}: a number too large") from None
    if not math.isfinite(number):
        raise _Malformed(f"{where}: {number} is not a finite number")
    return number


def _counts(value: Any, where: str, length: int | None = None) -> list[float]:
    counts = [_number(item, where) for item in _list(value, where, length)]
    if any(count < 0 for count in counts):
        raise _Malformed(f"{where}: a count below 0")
    return counts


def _time(value: Any, where: str) -> float | None:
    return None if value is None else _number(value, where)


def _over(window: SloWindow, threshold: float, min_events: int) -> bool:
    return window.error_ratio is not None and window.error_ratio > threshold and window.events >= min_events


def dumps(snapshot: dict[str, Any]) -> str:
    return json.dumps(snapshot, separators=(",", ":"))
