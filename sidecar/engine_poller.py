"""Polls the engine's /metrics: each scrape parsed once into an EngineSnapshot, handed to a fixed list of
consumers (the SLO tracker, the headroom), and turned into the sidecar's engine families.

A failed scrape raises PollError with a bounded reason; the process keeps the
last good families and marks them stale as they age (app.py).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from typing import Callable, Iterable, Protocol, Sequence

import aiohttp
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.samples import Sample

from .config import SidecarConfig
from .engine_snapshot import FAMILIES, EngineSnapshot, SnapshotBuilder
from .exposition import ExpositionReader, SampleFilter, Scrape
from .poller import PollError

SCRAPE_ERROR_REASONS = ("connection", "timeout", "http_status", "too_large", "truncated", "malformed")
# The classic text format: the sidecar needs no exemplars, and prometheus_client's
# OpenMetrics writer (0.26) renames vllm:* samples unless told otherwise, which a
# stock vLLM server does not do. The reader copes with OpenMetrics all the same.
ACCEPT = "text/plain;version=0.0.4"


log = logging.getLogger(__name__)


class SnapshotConsumer(Protocol):
    """What takes each engine snapshot: the series it reads beyond the snapshot's own (its `metrics`),
    and what it does with it. A failure there costs its own figures (cleared), never the scrape."""

    metrics: Sequence[str]

    def take(self, snapshot: EngineSnapshot) -> object: ...

    def clear(self) -> None: ...


async def fetch_exposition(session: aiohttp.ClientSession, url: str, max_bytes: int) -> tuple[str, bool]:
    """(text, is OpenMetrics); the caller bounds the time."""
    try:
        async with session.get(url, headers={"Accept": ACCEPT}) as response:
            if response.status != 200:
                raise PollError("http_status", f"{url} answered {response.status}")
            chunks, size = [], 0
            async for chunk in response.content.iter_chunked(256 * 1024):
                size += len(chunk)
                if size > max_bytes:
                    raise PollError("too_large", f"{url} sent more than {max_bytes} bytes")
                chunks.append(chunk)
            body = b"".join(chunks)
            openmetrics = response.headers.get("Content-Type", "").startswith("application/openmetrics-text")
            return body.decode("utf-8", errors="replace"), openmetrics
    except aiohttp.ClientPayloadError as exc:
        raise PollError("truncated", f"{url}: {exc}") from None
    except (aiohttp.ClientConnectionError, OSError) as exc:
        raise PollError("connection", f"{url}: {exc}") from None


class EnginePoller:
    name = "engine"
    error_reasons = SCRAPE_ERROR_REASONS

    def __init__(self, config: SidecarConfig, consumers: Iterable[SnapshotConsumer] = (),
                 process_start_time: float | None = None, monotonic: Callable[[], float] | None = None):
        """`consumers` are fixed here, so what the scrape keeps is known before the first one;
        `process_start_time`: the engine's, as the restored SLO state last saw it (a restart while the
        sidecar was down is then one); `monotonic`: the clock of the windows (default time.monotonic; a bench
        moves it on by the interval per scrape)."""
        self.config = config
        self.monotonic = monotonic
        self.consumers = tuple(consumers)
        self._failing: set[int] = set()  # consumers whose last take failed (logged once per streak)
        self.wanted = SampleFilter([*FAMILIES.families, *(m for c in self.consumers for m in c.metrics)])
        self.reader = ExpositionReader(self.wanted)
        self.interval_s = config.engine_interval_s
        self.timeout_s = config.engine_timeout_s
        self.backoff_max_s = config.engine_interval_s  # no backoff: a restarted engine is seen at once
        self.url = config.engine_url + "/metrics"
        self.builder = SnapshotBuilder(window_s=config.rate_window_s, process_start_time=process_start_time)
        self.last_snapshot: EngineSnapshot | None = None
        self.samples_dropped = 0  # in the last scrape, over max_engine_series
        self._session: aiohttp.ClientSession | None = None

    @property
    def engine_gpus(self) -> frozenset[str]:
        """UUIDs of the GPUs the engine said it can use, in its last scrape."""
        return frozenset() if self.last_snapshot is None else self.last_snapshot.engine_gpus

    def rate(self, key: str) -> float | None:
        """A per-second rate of the last snapshot (engine_snapshot.COUNTERS' keys); None before one."""
        return None if self.last_snapshot is None else self.last_snapshot.rates.get(key)

    async def poll(self) -> list[Metric]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        text, openmetrics = await fetch_exposition(self._session, self.url, self.config.engine_max_bytes)
        return self.take(text, openmetrics)

    def take(self, text: str, openmetrics: bool = False) -> list[Metric]:
        """One scrape's exposition: parsed once, the snapshot built and handed on, the families out."""
        scrape = self._capped(self.reader.read(text, openmetrics))  # ExpositionError is a PollError
        snapshot = self.builder.build(scrape, time.time(), (self.monotonic or time.monotonic)())
        self.last_snapshot = snapshot
        for index, consumer in enumerate(self.consumers):
            self._feed(index, consumer, snapshot)
        return [*engine_families(snapshot), GaugeMetricFamily(
            "sidecar_engine_samples_dropped", "Samples of the last engine scrape dropped over max_engine_series "
            "(an engine exposing unbounded label sets).", value=self.samples_dropped)]

    def _feed(self, index: int, consumer: SnapshotConsumer, snapshot: EngineSnapshot) -> None:
        try:
            consumer.take(snapshot)
            self._failing.discard(index)
        except Exception:
            if index not in self._failing:
                log.exception("%s failed on an engine scrape; its figures are withdrawn", type(consumer).__name__)
            self._failing.add(index)
            consumer.clear()

    def _capped(self, scrape: Scrape) -> Scrape:
        """At most max_engine_series samples: the first ones, which hold every family's first label sets."""
        limit = self.config.max_engine_series
        count = len(scrape.layout.kept)
        dropped = max(0, count - limit)
        if dropped and not self.samples_dropped:
            log.warning("engine exposes %d wanted samples, over max_engine_series=%d; dropping %d",
                        count, limit, dropped)
        self.samples_dropped = dropped
        return Scrape(scrape.layout.capped(limit), scrape.values) if dropped else scrape

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def engine_families(stats: EngineSnapshot) -> list[Metric]:
    """The derived engine metrics, in base units."""
    families: list[Metric] = []

    def gauge(name: str, documentation: str, value: float | None) -> None:
        if value is not None:
            family = Metric("sidecar_engine_" + name, documentation, "gauge")
            family.samples.append(Sample(family.name, {}, value))
            families.append(family)

    gauge("queue_depth", "Requests waiting in vLLM's queue (vllm:num_requests_waiting).",
          stats.gauges.get("queue_depth"))
    gauge("running_requests", "Requests vLLM is running now.", stats.gauges.get("running_requests"))
    gauge("kv_cache_usage_ratio", "Share of the KV cache in use, 0-1.", stats.gauges.get("kv_cache_usage_ratio"))
    for key, documentation in (
        ("finished_requests_per_second", "Requests vLLM finished per second, over the rate window."),
        ("preemptions_per_second", "Sequences preempted per second, over the rate window."),
        ("prompt_tokens_per_second", "Prompt tokens processed per second, over the rate window."),
        ("generation_tokens_per_second", "Tokens generated per second, over the rate window."),
    ):
        gauge(key, documentation, stats.rates.get(key))
    gauge("error_ratio", "Share of generation requests answered 5xx, over the rate window.", stats.error_ratio)
    if stats.quantiles:
        # `percentile`, not `quantile`: that label belongs to summaries, whose _count and _sum
        # are cumulative; these are estimates over a sliding window, so plain gauges.
        latency = Metric(LATENCY, "Latency percentiles over the rate window, from vLLM's histograms "
                                  "(NaN when nothing was observed).", "gauge")
        latency.samples = [Sample(LATENCY, _latency_labels(key), value if not math.isinf(value) else math.nan)
                           for key, value in sorted(stats.quantiles.items())]
        families.append(latency)
    return families


LATENCY = "sidecar_engine_latency_seconds"


@functools.cache
def _latency_labels(key: tuple[str, float]) -> dict[str, str]:
    """One percentile's labels, made once: the same few label sets are served every scrape (never changed
    after, so sharing them is safe)."""
    metric, q = key
    return {"metric": metric, "percentile": f"{q * 100:g}"}
