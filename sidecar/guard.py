"""The sidecar's /metrics, which no single collector can fail.

prometheus_client's registry calls its collectors one after the other, and its
encoder formats every family they yield: one exception in either, anywhere, fails
the whole exposition (a 500), and with it every series an alert or the HPA reads.
Here each collector sits behind a GuardedCollector, which materialises its families
inside a try: a collector that raises, or yields something that is not a family,
loses its own families for that scrape, and only those. A family that the encoder
cannot format (a label value that is not a string, a value that is not a number)
is found by encoding the families one by one, on such a failing scrape only,
and its collector's families are left out as if it had raised.
Each failure counts in sidecar_exposition_errors_total{collector} and is logged
once per streak of failing scrapes, not at every scrape.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger("slo_sidecar.sidecar.exposition")

Encoder = Callable[[Collector], bytes]


class GuardedCollector:
    """prometheus_client custom collector: the families of `collector`, or none if it fails."""

    def __init__(self, name: str, collector: Collector, on_error: Callable[[str, Exception], None]):
        self.name = name  # a bounded label value
        self.collector = collector
        self.on_error = on_error

    def collect(self) -> list[Metric]:
        return self._guarded(self.collector.collect)

    def describe(self) -> list[Metric]:
        """What the registry asks at register time (a collector without describe reserves no names)."""
        describe = getattr(self.collector, "describe", None)
        return [] if describe is None else self._guarded(describe)

    def _guarded(self, method: Callable[[], Iterable[Metric]]) -> list[Metric]:
        try:
            families = list(method())  # a generator raises as it is consumed: consume it here
            for family in families:
                if not isinstance(family, Metric):
                    raise TypeError(f"yielded {type(family).__name__}, not a metric family")
        except Exception as exc:
            self.on_error(self.name, exc)
            return []
        return families


class GuardedExposition:
    """The collectors of the sidecar's /metrics, each guarded, and the count of their failures.

    encode() renders once per poll (changed() marks one done) and at most every max_age_s, and serves
    those bytes to every scrape in between: 20 scrapers cost one rendering. Failures are counted once per
    collector and rendering, and a collector's streak of failing renderings ends with the first it does
    not fail.
    """

    def __init__(self, max_age_s: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age_s = max_age_s
        self.clock = clock
        self._rendered: dict[Encoder, tuple[float, bytes]] = {}  # encoder -> (when, the bytes)
        self.guards: list[GuardedCollector] = []
        self.groups: dict[str, CollectorRegistry] = {}
        self.errors = Counter("sidecar_exposition_errors", "Scrapes of the sidecar's /metrics that left out a "
                              "collector's families because it failed (raised, or yielded what cannot be "
                              "encoded).", ["collector"], registry=None)
        self.failing: dict[str, int] = {}  # collector -> scrapes failed in a row
        self._failed_now: set[str] = set()

    def add(self, name: str, collector: Collector) -> None:
        self.guards.append(GuardedCollector(name, collector, self._failed))
        self.errors.labels(name)  # 0 from the start, so an increase is seen

    def group(self, name: str) -> CollectorRegistry:
        """A registry for metrics created with registry=..., guarded as one collector `name`."""
        if name not in self.groups:
            self.groups[name] = CollectorRegistry()
            self.add(name, self.groups[name])
        return self.groups[name]

    def collect(self) -> Iterable[Metric]:
        for guard in self.guards:
            yield from guard.collect()
        yield from self.errors.collect()  # last: it counts this scrape's failures already

    def changed(self) -> None:
        """New values to serve (a poll ended): the next scrape renders afresh."""
        self._rendered.clear()

    def encode(self, encoder: Encoder) -> bytes:
        """The exposition, without the families of the collectors that failed: rendered afresh after a
        poll or once max_age_s old, else the bytes rendered last."""
        now = self.clock()
        rendered = self._rendered.get(encoder)
        if rendered is not None and now - rendered[0] < self.max_age_s:
            return rendered[1]
        body = self._render(encoder)
        self._rendered[encoder] = (now, body)
        return body

    def _render(self, encoder: Encoder) -> bytes:
        self._failed_now = set()
        try:
            try:
                return encoder(self)
            except Exception:  # a family the encoder cannot format: find it, and leave it out
                return encoder(_EncodableOnly(self, encoder))
        finally:
            self._end_streaks()

    def _failed(self, name: str, exc: Exception) -> None:
        if name in self._failed_now:  # a scrape that retries a failed encoding collects twice
            return
        self._failed_now.add(name)
        self.errors.labels(name).inc()
        if name not in self.failing:
            log.error("collector %s failed; its families are left out of /metrics until it recovers: %r",
                      name, exc, exc_info=exc)
        self.failing[name] = self.failing.get(name, 0) + 1

    def _end_streaks(self) -> None:
        for name in [name for name in self.failing if name not in self._failed_now]:
            log.info("collector %s served again after %d failed scrapes", name, self.failing.pop(name))


class _EncodableOnly:
    """The families of the collectors whose every family `encoder` can format, each tried on its own."""

    def __init__(self, exposition: GuardedExposition, encoder: Encoder):
        self.exposition = exposition
        self.encoder = encoder

    def collect(self) -> Iterable[Metric]:
        for guard in self.exposition.guards:
            families = guard.collect()
            try:
                for family in families:
                    self.encoder(_Families([family]))
            except Exception as exc:  # all of the collector's families go, as when its collect() fails
                self.exposition._failed(guard.name, exc)
                continue
            yield from families
        yield from self.exposition.errors.collect()


class _Families:
    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families
