"""Scrapes the engine's /metrics and turns it into the sidecar's engine families.

A failed scrape raises CollectError with a bounded reason; the process keeps the
last good families and marks them stale as they age (app.py).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Protocol, Sequence

import aiohttp
from prometheus_client.core import GaugeMetricFamily, Metric

from .collector import CollectError
from .config import SidecarConfig
from .engine_stats import FAMILIES, EngineStats, EngineStatsDeriver
from .exposition import Sample, SampleFilter, parse
from .slo_tracker import SloTracker

PROCESS_START = "process_start_time_seconds"
ACCELERATOR_INFO = "slo_engine_accelerator_info"  # the engine's GPUs by UUID: the pod's own
SCRAPE_FAMILIES = SampleFilter([*FAMILIES.families, PROCESS_START, ACCELERATOR_INFO])
SCRAPE_ERROR_REASONS = ("connection", "timeout", "http_status", "too_large", "truncated", "malformed")
# The classic text format: the sidecar needs no exemplars, and prometheus_client's
# OpenMetrics writer (0.26) renames vllm:* samples unless told otherwise, which a
# stock vLLM server does not do. The reader copes with OpenMetrics all the same.
ACCEPT = "text/plain;version=0.0.4"


log = logging.getLogger("sidecar.engine")


class ScrapeReader(Protocol):
    """Something more that reads each engine scrape (the tenants' token rates): the counters it wants,
    and what it does with them. A failure there costs its own figures (cleared), never the scrape."""

    families: SampleFilter

    def update(self, samples: list[Sample], now: float, process_start_time: float | None = None) -> object: ...

    def clear(self) -> None: ...


async def fetch_exposition(session: aiohttp.ClientSession, url: str, max_bytes: int) -> tuple[str, bool]:
    """(text, is OpenMetrics); the caller bounds the time."""
    try:
        async with session.get(url, headers={"Accept": ACCEPT}) as response:
            if response.status != 200:
                raise CollectError("http_status", f"{url} answered {response.status}")
            chunks, size = [], 0
            async for chunk in response.content.iter_chunked(256 * 1024):
                size += len(chunk)
                if size > max_bytes:
                    raise CollectError("too_large", f"{url} sent more than {max_bytes} bytes")
                chunks.append(chunk)
            body = b"".join(chunks)
            openmetrics = response.headers.get("Content-Type", "").startswith("application/openmetrics-text")
            return body.decode("utf-8", errors="replace"), openmetrics
    except aiohttp.ClientPayloadError as exc:
        raise CollectError("truncated", f"{url}: {exc}") from None
    except (aiohttp.ClientConnectionError, OSError) as exc:
        raise CollectError("connection", f"{url}: {exc}") from None


class EngineCollector:
    name = "engine"
    error_reasons = SCRAPE_ERROR_REASONS

    def __init__(self, config: SidecarConfig, tracker: SloTracker | None = None,
                 readers: Sequence[ScrapeReader] = ()):
        self.config = config
        self.tracker = tracker
        self.readers: list[ScrapeReader] = []
        self._failing: set[int] = set()  # readers whose last update failed (logged once per streak)
        self.wanted = SampleFilter([*SCRAPE_FAMILIES.families, *(tracker.metrics if tracker else ())])
        for reader in readers:
            self.add_reader(reader)
        self.interval_s = config.engine_interval_s
        self.timeout_s = config.engine_timeout_s
        self.backoff_max_s = config.engine_interval_s  # no backoff: a restarted engine is seen at once
        self.url = config.engine_url + "/metrics"
        self.deriver = EngineStatsDeriver(window_s=config.rate_window_s)
        self.last_stats: EngineStats | None = None
        self.engine_gpus: frozenset[str] = frozenset()  # UUIDs of the GPUs the engine said it can use
        self.samples_dropped = 0  # in the last scrape, over max_engine_series
        self._session: aiohttp.ClientSession | None = None

    def add_reader(self, reader: ScrapeReader) -> None:
        """One more reader of each scrape, its families added to what the scrape keeps (a reader that needs
        this collector's own figures, as the headroom does, can only be built after it)."""
        self.readers.append(reader)
        self.wanted = SampleFilter([*self.wanted.families, *reader.families.families])

    async def collect(self) -> list[Metric]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        text, openmetrics = await fetch_exposition(self._session, self.url, self.config.engine_max_bytes)
        return self.take(text, openmetrics)

    def take(self, text: str, openmetrics: bool = False) -> list[Metric]:
        """One scrape's exposition, read: the tracker, the rates and the readers fed; the families out."""
        samples = self._capped(parse(text, self.wanted, openmetrics))  # ExpositionError is a CollectError
        start_time = next((s.value for s in samples if s.name == PROCESS_START), None)
        self.engine_gpus = frozenset(dict(s.labels).get("uuid", "") for s in samples if s.name == ACCELERATOR_INFO)
        if self.tracker is not None:
            self.tracker.observe(samples, time.time(), start_time)
        now = time.monotonic()
        self.last_stats = self.deriver.update(samples, now, start_time)
        for index, reader in enumerate(self.readers):
            self._feed(index, reader, samples, now, start_time)
        return [*engine_families(self.last_stats), GaugeMetricFamily(
            "sidecar_engine_samples_dropped", "Samples of the last engine scrape dropped over max_engine_series "
            "(an engine exposing unbounded label sets).", value=self.samples_dropped)]

    def _feed(self, index: int, reader: ScrapeReader, samples: list[Sample], now: float,
              start_time: float | None) -> None:
        try:
            reader.update(samples, now, start_time)
            self._failing.discard(index)
        except Exception:
            if index not in self._failing:
                log.exception("%s failed on an engine scrape; its figures are withdrawn", type(reader).__name__)
            self._failing.add(index)
            reader.clear()

    def _capped(self, samples: list) -> list:
        """At most max_engine_series samples: the first ones, which hold every family's first label sets."""
        limit = self.config.max_engine_series
        dropped = max(0, len(samples) - limit)
        if dropped and not self.samples_dropped:
            log.warning("engine exposes %d wanted samples, over max_engine_series=%d; dropping %d",
                        len(samples), limit, dropped)
        self.samples_dropped = dropped
        return samples[:limit] if dropped else samples

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def engine_families(stats: EngineStats) -> list[Metric]:
    """The derived engine metrics, in base units."""
    families: list[Metric] = []

    def gauge(name: str, documentation: str, value: float | None) -> None:
        if value is not None:
            families.append(GaugeMetricFamily("sidecar_engine_" + name, documentation, value=value))

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
        latency = GaugeMetricFamily("sidecar_engine_latency_seconds",
                                    "Latency percentiles over the rate window, from vLLM's histograms "
                                    "(NaN when nothing was observed).", labels=["metric", "percentile"])
        for (metric, q), value in sorted(stats.quantiles.items()):
            latency.add_metric([metric, f"{q * 100:g}"], value if not math.isinf(value) else math.nan)
        families.append(latency)
    return families
