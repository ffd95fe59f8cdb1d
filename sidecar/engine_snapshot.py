"""Each engine scrape, read once into one EngineSnapshot: what every consumer of the scrape takes.

In the shape of vLLM's v1 metrics (a stats dataclass, built once per step, handed to a fixed list of
loggers): the engine poller parses a scrape, SnapshotBuilder turns it into an EngineSnapshot, and the
tracker, the headroom, the cost and the served families all read that one snapshot. Counter resets
and engine restarts are handled here, once, for every counter the consumers use.

Pure code: feed parsed samples and the scrape's times, read a snapshot back. Gauges are summed over
the engine's label sets (one pod, one model); counters become per-second rates over a window, resets
handled; histograms become quantile estimates over the same window, from bucket increases summed by
`le` (what `histogram_quantile(q, sum by (le) (rate(..._bucket[w])))` computes), and means from their
`_sum` and `_count`; the per-tenant token counters become each tenant's token rates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from slo_sidecar.spec.model import (
    ACCELERATOR_INFO,
    GENERATION_ENDPOINTS,
    GENERATION_TOKENS,
    GOODPUT_TOKENS,
    HTTP_REQUESTS,
    PROMPT_TOKENS,
    TENANT_LABEL,
)

from .exposition import Layout, Sample, SampleFilter, Scrape, picker
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
QUANTILES = (0.5, 0.9, 0.99)

# The engine's per-tenant token counters (the contract's names), labelled `model` (the served name, or
# "unknown"); good tokens: generated tokens of requests that met every exact SLO target.
TENANT_COUNTERS = (PROMPT_TOKENS, GENERATION_TOKENS, GOODPUT_TOKENS)

PROCESS_START = "process_start_time_seconds"

FAMILIES = SampleFilter(
    list(GAUGES.values())
    + [name.removesuffix("_total") for name in (*COUNTERS.values(), HTTP_REQUESTS, *TENANT_COUNTERS)]
    + list(HISTOGRAMS.values())  # their _bucket, _sum and _count
    + [PROCESS_START, ACCELERATOR_INFO]
)


@dataclass(frozen=True)
class TenantTokenRates:
    """One tenant's tokens per second over the rate window."""

    prompt: float
    generation: float
    good: float | None = None  # None: the engine does not count its good tokens


@dataclass(frozen=True)
class EngineSnapshot:
    """One engine scrape, read: the samples as parsed and everything derived from them over the window."""

    scrape: Scrape  # the wanted samples, as read (the SLO tracker reads its SLIs' series from them)
    wall_time: float  # Unix seconds of the scrape
    monotonic: float  # the same moment on the monotonic clock (windows and smoothing)
    process_start_time: float | None  # the engine's, when it exposes one
    restarted: bool  # the engine's process start time changed since the scrape before
    gauges: dict[str, float]  # missing from the scrape: absent here
    rates: dict[str, float]  # per second over the window; absent until two scrapes cover it
    error_ratio: float | None  # 5xx share of generation requests over the window
    quantiles: dict[tuple[str, float], float]  # (histogram, q) -> seconds; NaN with no observations
    means: dict[str, float]  # histogram -> mean seconds over the window, where it observed anything
    tenant_tokens: dict[str, TenantTokenRates]  # served name -> its token rates over the window
    engine_gpus: frozenset[str]  # UUIDs of the GPUs the engine says it can use

    @property
    def samples(self) -> list[Sample]:
        """Every wanted sample of the scrape, in exposition order (built on each call)."""
        return self.scrape.samples()


# Sample name -> (what it is, the key it is summed under).
GAUGE, COUNTER, BUCKET, HTTP, SUM, COUNT, TENANT = range(7)
SAMPLE_KINDS: dict[str, tuple[int, str]] = {
    **{name: (GAUGE, key) for key, name in GAUGES.items()},
    **{name: (COUNTER, name) for name in COUNTERS.values()},
    **{family + "_bucket": (BUCKET, family) for family in HISTOGRAMS.values()},
    **{family + "_sum": (SUM, key) for key, family in HISTOGRAMS.items()},
    **{family + "_count": (COUNT, key) for key, family in HISTOGRAMS.items()},
    **{name: (TENANT, name) for name in TENANT_COUNTERS},
    HTTP_REQUESTS: (HTTP, HTTP_REQUESTS),
}
HTTP_TOTAL, HTTP_ERRORS = "http:total", "http:errors"
HISTOGRAM_KEYS = {family: key for key, family in HISTOGRAMS.items()}


class _Plan:
    """Where each figure of a snapshot comes from in one scrape layout: worked out once per layout (an
    engine's series rarely change), so each scrape only adds up values by index."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.start: int | None = None
        self.gauges: dict[str, list[int]] = {}
        counters: dict[tuple[int, str], list[int]] = {}
        buckets: dict[str, dict[float, list[int]]] = {}
        self.tenants: dict[str, dict[str, list[int]]] = {}  # model -> counter -> where, over other labels
        gpus = set()
        for index, key in enumerate(layout.keys):
            if key is None:
                continue
            name, labels = key
            if name == PROCESS_START and self.start is None:
                self.start = index
            kind = SAMPLE_KINDS.get(name)
            if kind is None:
                if name == ACCELERATOR_INFO:
                    gpus.add(dict(labels).get("uuid", ""))
                continue
            what, key_ = kind
            if what == BUCKET:
                bound = _bound(labels)
                if bound is not None:  # a bucket without `le` cannot be placed
                    buckets.setdefault(key_, {}).setdefault(bound, []).append(index)
            elif what == GAUGE:
                self.gauges.setdefault(key_, []).append(index)
            elif what == HTTP:
                endpoint, code = _endpoint_and_code(labels)
                if endpoint in GENERATION_ENDPOINTS:
                    counters.setdefault((HTTP, HTTP_TOTAL), []).append(index)
                    errors = counters.setdefault((HTTP, HTTP_ERRORS), [])
                    if code.startswith("5"):
                        errors.append(index)
            elif what == TENANT:
                model = next((v for k, v in labels if k == TENANT_LABEL), None)
                if model is not None:
                    self.tenants.setdefault(model, {}).setdefault(key_, []).append(index)
            else:  # COUNTER, SUM, COUNT
                counters.setdefault((what, key_), []).append(index)
        self.gpus = frozenset(gpus)
        self.counter_keys = sorted(counters)
        self.bucket_keys = [(family, sorted(per_family)) for family, per_family in sorted(buckets.items())]
        # The pod's counter vector: its layout, and where each of its values is.
        self.vector_layout = (tuple(self.counter_keys),
                              tuple((family, tuple(bounds)) for family, bounds in self.bucket_keys))
        self.vector = _Gather([counters[key] for key in self.counter_keys] + [
            buckets[family][bound] for family, bounds in self.bucket_keys for bound in bounds])


class _Gather:
    """Sums of values at fixed indexes, for each slot of a vector. Nearly every slot is one sample (one pod,
    one model): those are picked in one C-level call, and only the few sums over label sets add up in Python."""

    def __init__(self, slots: list[list[int]]):
        self.size = len(slots)
        self.picked = [position for position, where in enumerate(slots) if where]
        self._pick = picker([slots[position][0] for position in self.picked])
        self.more = [(position, where[1:]) for position, where in enumerate(slots) if len(where) > 1]
        self.dense = len(self.picked) == self.size

    def __call__(self, values: list[float]) -> list[float]:
        firsts = list(self._pick(values))
        vector = firsts if self.dense else [0.0] * self.size
        if not self.dense:
            for position, value in zip(self.picked, firsts):
                vector[position] = value
        for position, where in self.more:
            for index in where:
                vector[position] += values[index]
        return vector


def _total(values: list[float], where: list[int]) -> float:
    """The sum of the values at those indexes (0.0 for none): a family summed over its label sets."""
    total = 0.0
    for index in where:
        total += values[index]
    return total


@dataclass
class SnapshotBuilder:
    """Keeps the pod's counters (bucket, sum and count series included) in one CounterVector, and each
    tenant's token counters in one of its own.

    A vector's layout is the scrape's set of counters; when it changes (a new bucket bound, a family
    gone) its history starts again, so memory follows what the engine exposes now, never what it once
    did. A tenant appearing (its first request) or vanishing leaves the others' history alone; a
    tenant's series seen for the first time count nothing yet (Prometheus's rule).
    """

    window_s: float = 60.0
    process_start_time: float | None = None  # the last one seen (or restored with the SLO state)
    _pod: CounterVector | None = None
    _layout: tuple = ()
    _plan: _Plan | None = None
    _tenants: dict[str, tuple[tuple[str, ...], CounterVector]] = field(default_factory=dict)

    def build(self, scrape: Scrape | list[Sample], wall_time: float, monotonic: float) -> EngineSnapshot:
        """`scrape`: from an ExpositionReader, or samples (tests, the capacity report's pair of scrapes)."""
        if not isinstance(scrape, Scrape):
            scrape = Scrape.of(scrape)
        plan = self._plan
        if plan is None or plan.layout is not scrape.layout:
            plan = self._plan = _Plan(scrape.layout)
        values = scrape.values
        start_time = None if plan.start is None else values[plan.start]
        restarted = (start_time is not None and self.process_start_time is not None
                     and start_time != self.process_start_time)
        if start_time is not None:
            self.process_start_time = start_time
        gauges = {key: _total(values, where) for key, where in plan.gauges.items()}
        if plan.vector_layout != self._layout or self._pod is None:
            self._layout, self._pod = plan.vector_layout, CounterVector(horizon_s=self.window_s)
        self._pod.observe(monotonic, plan.vector(values), restarted)
        tenants = {model: {name: _total(values, where) for name, where in counters.items()}
                   for model, counters in plan.tenants.items()}
        tenant_tokens = self._tenant_rates(tenants, monotonic, restarted)

        def snapshot(rates=None, error_ratio=None, quantiles=None, means=None) -> EngineSnapshot:
            return EngineSnapshot(scrape, wall_time, monotonic, start_time, restarted, gauges, rates or {},
                                  error_ratio, quantiles or {}, means or {}, tenant_tokens, plan.gpus)

        increases = self._pod.increase(self.window_s, monotonic)
        covered_s = self._pod.covered_s(self.window_s, monotonic)
        if increases is None or not covered_s:
            return snapshot()
        counter_keys = plan.counter_keys
        increase = dict(zip(counter_keys, increases))
        rates = {key: increase[COUNTER, name] / covered_s for key, name in COUNTERS.items()
                 if (COUNTER, name) in increase}
        total = increase.get((HTTP, HTTP_TOTAL))
        error_ratio = increase[HTTP, HTTP_ERRORS] / total if total else None
        means = {}
        for (what, key), count in increase.items():
            total_s = increase.get((SUM, key))
            if what == COUNT and count > 0 and total_s is not None and math.isfinite(total_s):
                means[key] = total_s / count
        quantiles = {}
        position = len(counter_keys)
        for family, bounds in plan.bucket_keys:
            pairs = list(zip(bounds, increases[position:position + len(bounds)]))
            position += len(bounds)
            for q in QUANTILES:
                quantiles[(HISTOGRAM_KEYS[family], q)] = histogram_quantile(q, pairs)
        return snapshot(rates, error_ratio, quantiles, means)

    def _tenant_rates(self, tenants: dict[str, dict[str, float]], monotonic: float, restarted: bool
                      ) -> dict[str, TenantTokenRates]:
        series: dict[str, tuple[tuple[str, ...], CounterVector]] = {}
        rates: dict[str, TenantTokenRates] = {}
        for model, values in tenants.items():
            if PROMPT_TOKENS not in values and GENERATION_TOKENS not in values:
                continue  # good tokens alone cannot be weighed
            layout = tuple(sorted(values))
            known = self._tenants.get(model)
            vector = known[1] if known is not None and known[0] == layout else CounterVector(horizon_s=self.window_s)
            vector.observe(monotonic, [values[name] for name in layout], restarted)
            series[model] = (layout, vector)
            increases = vector.increase(self.window_s, monotonic)
            covered_s = vector.covered_s(self.window_s, monotonic)
            if increases is None or not covered_s:
                continue
            per_second = {name: increase / covered_s for name, increase in zip(layout, increases)}
            tenant = TenantTokenRates(per_second.get(PROMPT_TOKENS, 0.0), per_second.get(GENERATION_TOKENS, 0.0),
                                      per_second.get(GOODPUT_TOKENS))
            if all(math.isfinite(v) for v in (tenant.prompt, tenant.generation, tenant.good or 0.0)):
                rates[model] = tenant
        self._tenants = series
        return rates


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
