"""What the sidecar derives from each scrape of the engine: one EngineStats snapshot.

Pure code: feed parsed samples and the scrape time, read a snapshot back. Gauges
are summed over the engine's label sets (one pod, one model); counters become
per-second rates over a window, resets handled; histograms become quantile
estimates over the same window, from bucket increases summed by `le`, which is
what `histogram_quantile(q, sum by (le) (rate(..._bucket[w])))` computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .exposition import Sample, SampleFilter
from .rates import CounterSeries, histogram_quantile

GAUGES = {
    "queue_depth": "vllm:num_requests_waiting",
    "running_requests": "vllm:num_requests_running",
    "kv_cache_usage_ratio": "vllm:kv_cache_usage_perc",  # a 0-1 ratio despite its name
}
COUNTERS = {
    "preemptions_per_second": "vllm:num_preemptions_total",
    "finished_requests_per_second": "vllm:request_success_total",
    "prompt_tokens_per_second": "vllm:prompt_tokens_total",
    "generation_tokens_per_second": "vllm:generation_tokens_total",
}
HISTOGRAMS = {
    "ttft": "vllm:time_to_first_token_seconds",
    "inter_token": "vllm:inter_token_latency_seconds",
    "e2e": "vllm:e2e_request_latency_seconds",
    "queue_time": "vllm:request_queue_time_seconds",
}
HTTP_REQUESTS = "slo_engine_http_requests_total"
GENERATION_ENDPOINTS = ("/v1/completions", "/v1/chat/completions")
QUANTILES = (0.5, 0.9, 0.99)

FAMILIES = SampleFilter(
    list(GAUGES.values())
    + [name.removesuffix("_total") for name in (*COUNTERS.values(), HTTP_REQUESTS)]
    + list(HISTOGRAMS.values())
)


@dataclass(frozen=True)
class EngineStats:
    gauges: dict[str, float]  # missing from the scrape: absent here
    rates: dict[str, float]  # per second over the window; absent until two scrapes cover it
    error_ratio: float | None  # 5xx share of generation requests over the window
    quantiles: dict[tuple[str, float], float]  # (histogram, q) -> seconds; NaN with no observations


@dataclass
class EngineStatsDeriver:
    window_s: float = 60.0
    _counters: dict[str, CounterSeries] = field(default_factory=dict)
    _start_time: float | None = None
    _seen: set[str] = field(default_factory=set)  # series touched by the current update

    def _series(self, key: str) -> CounterSeries:
        self._seen.add(key)
        series = self._counters.get(key)
        if series is None:
            series = self._counters[key] = CounterSeries(horizon_s=self.window_s)
        return series

    def _forget_unseen(self) -> None:
        """Drop series the engine no longer exposes (a churned `le`, a removed family): memory stays bounded."""
        if len(self._seen) != len(self._counters):
            for key in self._counters.keys() - self._seen:
                del self._counters[key]
        self._seen = set()

    def update(self, samples: list[Sample], now: float, process_start_time: float | None = None) -> EngineStats:
        restarted = (process_start_time is not None and self._start_time is not None
                     and process_start_time != self._start_time)
        if process_start_time is not None:
            self._start_time = process_start_time
        sums: dict[str, float] = {}
        buckets: dict[str, dict[float, float]] = {}
        http_total = http_errors = 0.0
        for sample in samples:
            if sample.name.endswith("_bucket"):
                family = sample.name[: -len("_bucket")]
                bound = _bound(sample.label("le"))
                per_family = buckets.setdefault(family, {})
                per_family[bound] = per_family.get(bound, 0.0) + sample.value
            elif sample.name == HTTP_REQUESTS:
                if sample.label("endpoint") in GENERATION_ENDPOINTS:
                    http_total += sample.value
                    if sample.label("code").startswith("5"):
                        http_errors += sample.value
            else:
                sums[sample.name] = sums.get(sample.name, 0.0) + sample.value

        gauges = {key: sums[name] for key, name in GAUGES.items() if name in sums}
        rates = {}
        for key, name in COUNTERS.items():
            if name in sums:
                series = self._series(name)
                series.observe(now, sums[name], restarted)
                rate = series.rate(self.window_s, now)
                if rate is not None:
                    rates[key] = rate
        error_ratio = None
        if http_total or http_errors:
            total, errors = self._series("http:total"), self._series("http:errors")
            total.observe(now, http_total, restarted)
            errors.observe(now, http_errors, restarted)
            total_increase, error_increase = total.increase(self.window_s, now), errors.increase(self.window_s, now)
            if total_increase:
                error_ratio = error_increase / total_increase
        quantiles = {}
        for key, family in HISTOGRAMS.items():
            if family not in buckets:
                continue
            increases = []
            for bound, count in sorted(buckets[family].items()):
                series = self._series(f"{family}:{bound}")
                series.observe(now, count, restarted)
                increases.append((bound, series.increase(self.window_s, now)))
            if any(increase is None for _, increase in increases):
                continue
            for q in QUANTILES:
                quantiles[(key, q)] = histogram_quantile(q, increases)
        self._forget_unseen()
        return EngineStats(gauges, rates, error_ratio, quantiles)


_BOUNDS: dict[str, float] = {}


def _bound(le: str) -> float:
    """float(le), remembered: the same few bucket bounds come back every scrape."""
    bound = _BOUNDS.get(le)
    if bound is None:
        bound = _BOUNDS[le] = float(le)
    return bound
