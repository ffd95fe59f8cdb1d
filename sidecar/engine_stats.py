"""What the sidecar derives from each scrape of the engine: one EngineStats snapshot.

Pure code: feed parsed samples and the scrape time, read a snapshot back. Gauges
are summed over the engine's label sets (one pod, one model); counters become
per-second rates over a window, resets handled; histograms become quantile
estimates over the same window, from bucket increases summed by `le`, which is
what `histogram_quantile(q, sum by (le) (rate(..._bucket[w])))` computes.
"""

from __future__ import annotations

from dataclasses import dataclass

from slo_spec.model import GENERATION_ENDPOINTS

from .exposition import Sample, SampleFilter
from .rates import CounterVector, histogram_quantile

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
    "tpot": "vllm:request_time_per_output_token_seconds",  # per request, as the SLO spec's tpot_s (headroom.py)
    "e2e": "vllm:e2e_request_latency_seconds",
    "queue_time": "vllm:request_queue_time_seconds",
}
HTTP_REQUESTS = "slo_engine_http_requests_total"
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


# Sample name -> (what it is, the key it is summed under).
GAUGE, COUNTER, BUCKET, HTTP = range(4)
SAMPLE_KINDS: dict[str, tuple[int, str]] = {
    **{name: (GAUGE, key) for key, name in GAUGES.items()},
    **{name: (COUNTER, name) for name in COUNTERS.values()},
    **{family + "_bucket": (BUCKET, family) for family in HISTOGRAMS.values()},
    HTTP_REQUESTS: (HTTP, HTTP_REQUESTS),
}
HTTP_TOTAL, HTTP_ERRORS = "http:total", "http:errors"
HISTOGRAM_KEYS = {family: key for key, family in HISTOGRAMS.items()}


@dataclass
class EngineStatsDeriver:
    """Keeps every counter of the scrape (bucket counts included) in one CounterVector.

    The vector's layout is the scrape's set of counters; when it changes (a new
    bucket bound, a family gone) history starts again, so memory follows what
    the engine exposes now, never what it once did.
    """

    window_s: float = 60.0
    _series: CounterVector | None = None
    _layout: tuple = ()
    _start_time: float | None = None

    def update(self, samples: list[Sample], now: float, process_start_time: float | None = None) -> EngineStats:
        restarted = (process_start_time is not None and self._start_time is not None
                     and process_start_time != self._start_time)
        if process_start_time is not None:
            self._start_time = process_start_time
        gauges: dict[str, float] = {}
        counters: dict[str, float] = {}
        buckets: dict[str, dict[float, float]] = {}
        for name, labels, value in samples:
            kind = SAMPLE_KINDS.get(name)
            if kind is None:
                continue
            what, key = kind
            if what == BUCKET:
                bound = _bound(labels)
                if bound is None:  # a bucket without `le` cannot be placed
                    continue
                per_family = buckets.get(key)
                if per_family is None:
                    per_family = buckets[key] = {}
                per_family[bound] = per_family.get(bound, 0.0) + value
            elif what == COUNTER:
                counters[key] = counters.get(key, 0.0) + value
            elif what == GAUGE:
                gauges[key] = gauges.get(key, 0.0) + value
            else:
                endpoint, code = _endpoint_and_code(labels)
                if endpoint in GENERATION_ENDPOINTS:
                    counters[HTTP_TOTAL] = counters.get(HTTP_TOTAL, 0.0) + value
                    if code.startswith("5"):
                        counters[HTTP_ERRORS] = counters.get(HTTP_ERRORS, 0.0) + value
                    else:
                        counters.setdefault(HTTP_ERRORS, 0.0)

        counter_keys = sorted(counters)
        bucket_keys = [(family, sorted(per_family)) for family, per_family in sorted(buckets.items())]
        layout = (tuple(counter_keys), tuple((family, tuple(bounds)) for family, bounds in bucket_keys))
        if layout != self._layout or self._series is None:
            self._layout, self._series = layout, CounterVector(horizon_s=self.window_s)
        values = [counters[key] for key in counter_keys]
        for family, bounds in bucket_keys:
            per_family = buckets[family]
            values += [per_family[bound] for bound in bounds]
        self._series.observe(now, values, restarted)
        increases = self._series.increase(self.window_s, now)
        covered_s = self._series.covered_s(self.window_s, now)
        if increases is None or not covered_s:
            return EngineStats(gauges, {}, None, {})

        increase = dict(zip(counter_keys, increases))
        rates = {key: increase[name] / covered_s for key, name in COUNTERS.items() if name in increase}
        total = increase.get(HTTP_TOTAL)
        error_ratio = increase[HTTP_ERRORS] / total if total else None
        quantiles = {}
        position = len(counter_keys)
        for family, bounds in bucket_keys:
            pairs = list(zip(bounds, increases[position:position + len(bounds)]))
            position += len(bounds)
            for q in QUANTILES:
                quantiles[(HISTOGRAM_KEYS[family], q)] = histogram_quantile(q, pairs)
        return EngineStats(gauges, rates, error_ratio, quantiles)


_BOUNDS: dict[tuple, float] = {}


def _bound(labels: tuple) -> float | None:
    """float(le) of a bucket's label set, remembered: the same label sets come back every scrape."""
    bound = _BOUNDS.get(labels)
    if bound is None:
        le = next((value for key, value in labels if key == "le"), None)
        try:
            bound = float(le)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        if len(_BOUNDS) > 10_000:  # an engine churning label values costs a refill, not memory
            _BOUNDS.clear()
        _BOUNDS[labels] = bound
    return bound


def _endpoint_and_code(labels: tuple) -> tuple[str, str]:
    endpoint = code = ""
    for key, value in labels:
        if key == "endpoint":
            endpoint = value
        elif key == "code":
            code = value
    return endpoint, code
