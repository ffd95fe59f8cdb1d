"""SLO headroom and capacity utilisation: how close the pod runs to its latency targets, live.

**Headroom** (`slo_headroom_ratio{slo}`), for each exact latency or goodput SLO of
the spec (those whose requests the engine judges against `sli.targets`: `ttft_s`,
`tpot_s`, `e2e_s`, `queue_s`), from the p90 of each measure over the sidecar's
rate window (`rate_window_s`, 60 s), read from vLLM's histograms as
`histogram_quantile(0.9, sum by (le) (rate(..._bucket[window])))` computes it
(engine_stats.py):

    p90(m)       = min(histogram p90 of m, mean(m) / (1 - 0.9))           (mean from _sum / _count, same window)
    raw(slo)     = max over the SLO's targets m of  p90(m) / target(m)     (1.0: the p90 sits at the target)
    sample(slo)  = min(max(raw(slo), 0), 4)                                (clamped to [0, 4])
    value(slo)  += (1 - exp(-dt / tau)) x (sample(slo) - value(slo))       (EWMA, tau = 60 s; the first sample as is)
    overall      = max over SLOs of value(slo)                             (slo_headroom_overall_ratio)

with dt the time since the previous engine scrape: an exponentially weighted
moving average whose weights do not depend on how often it is fed, so a missed
scrape or a slower `engine_interval_s` changes nothing but its resolution.
Measures: ttft from vllm:time_to_first_token_seconds, tpot from
vllm:request_time_per_output_token_seconds (per request, the spec's definition),
e2e from vllm:e2e_request_latency_seconds, queue from vllm:request_queue_time_seconds.

Why the cap on the p90: a histogram cannot place a value inside its first
bucket, and Prometheus's estimate interpolates from 0, so every request of a
window in vLLM's first queue-time bucket (0-0.3 s) puts the p90 at 0.27 s, and a
0.5 s queue-time target at 0.54, whatever the real queue times (1 ms at light
load): a floor under the headroom of any pod with traffic, which would keep the
HPA from scaling down. For a measure that cannot be negative Markov's
inequality bounds the p90 by ten times the mean (P(X >= 10 mean) <= 0.1), and
the mean is exact (the histogram's _sum and _count): capped there, a 1 ms mean
reads 0.01 s. The cap only ever lowers an estimate to what is proven; without
_sum and _count in the scrape the histogram's estimate stands alone.

Why p90, not the objective's quantile (99%): over one minute at a few requests
a second the p99 is the top two or three requests, noise; latency rises through
the whole distribution as load grows, so the p90 moves with load and is stable
enough to scale on. The objectives themselves are guarded by the burn-rate
alerts; headroom is a control signal, not an SLI. The price: a 99% objective
fails while the p90 is still well under its target (at about half of it for an
exponential tail), which is why the HPA's target is 0.4, not 0.8 (docs/sidecar.md). Why smoothed: a windowed
quantile jumps when a burst of slow requests enters or leaves the window, and an
autoscaler fed steps flaps. Why clamped: a stalled engine can put a p90 at 100x
its target; unclamped, that would hold the average above the HPA's target (0.4)
for ln(100/0.4) = 5.5 time constants after recovery, clamped at 4 for
ln(4/0.4) = 2.3; 4x is already "add pods now" (the HPA's scale-up policy caps
its proposal anyway).

A measure with no observation in the window (its quantile NaN) or not exposed
by the engine is left out of its SLO's max. When none of an SLO's measures has
one:
- the engine idle (no request running, none waiting): the sample is **0**. An
  idle pod has all its headroom, and the series must stay: the HPA skips any
  scale-down while one of its metrics cannot be read, so an absent value would
  keep an idle fleet at its peak size.
- requests in flight (a stall, or requests longer than the window): no sample;
  the average holds its last value (absent until it has one). Reading such a
  pod as idle would scale down a pod that is stuck; queue depth covers it.
A p90 in the +Inf bucket reads as the highest finite bound, as Prometheus
estimates it.

**Capacity utilisation** (`slo_capacity_utilisation_ratio`), with a capacity
report (`capacity` setting: the JSON file `slo-sidecar capacity --json` writes,
`{"version": "slo-sidecar/capacity/v1", ..., "capacity_rps": 3.1}`):

    utilisation = finished requests per second over the rate window (vllm:request_success_total) / capacity_rps

1.0: the pod carries the highest rate at which it met every SLO when measured.
It is throughput, not demand: an overloaded pod reads about 1 while its queue
grows (queue depth says that). `slo_capacity_requests_per_second` serves the
report's figure, for sizing: replicas = ceil(traffic / capacity).

Both headroom and utilisation come from the engine, and are withdrawn with its
other values once they are stale (`stale_after_s`): the HPA then sees no data for
the pod rather than a frozen number. Pure code but for reading the report file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

from prometheus_client.core import GaugeMetricFamily, Metric

from slo_spec.model import Spec

from .engine_stats import HISTOGRAMS, EngineStats
from .exposition import Sample, SampleFilter
from .rates import CounterVector

QUANTILE = 0.9
DEFAULT_TIME_CONSTANT_S = 60.0
CLAMP = (0.0, 4.0)
# The measures of the spec's targets (`<measure>_s`) -> the engine snapshot's quantile keys.
MEASURE_KEYS = {"ttft": "ttft", "tpot": "tpot", "e2e": "e2e", "queue": "queue_time"}
REQUEST_RATE = "finished_requests_per_second"  # engine_stats' rate of vllm:request_success_total
CAPACITY_VERSION = "slo-sidecar/capacity/v1"

HEADROOM = "slo_headroom_ratio"
OVERALL = "slo_headroom_overall_ratio"
UTILISATION = "slo_capacity_utilisation_ratio"
CAPACITY = "slo_capacity_requests_per_second"


# --- the formula ----------------------------------------------------------------------------------

def exact_targets(spec: Spec) -> dict[str, dict[str, float]]:
    """SLO name -> its targets (`ttft_s` -> 0.5), for every exact latency or goodput SLO.

    A sliced SLO's slices share its name and targets, and vLLM's histograms are the
    pod's, not a tenant's: one headroom per name.
    """
    return {slo.name: dict(slo.sli.targets) for slo in spec.slos if slo.sli.targets}


def capped_p90(p90: float, mean: float | None) -> float:
    """The histogram's p90 estimate, never above what Markov's inequality proves for a non-negative measure:
    p90 <= mean / (1 - 0.9). NaN stays NaN (nothing observed)."""
    if mean is None or not math.isfinite(mean) or math.isnan(p90):
        return p90
    return min(p90, max(mean, 0.0) / (1.0 - QUANTILE))


def raw_headroom(targets: Mapping[str, float], quantiles: Mapping[tuple[str, float], float],
                 means: Mapping[str, float] | None = None) -> float | None:
    """The worst p90 / target over the targets whose measure was observed; None when none was.

    `means`: each measure's mean over the same window (the snapshot's keys: "queue_time"), for the cap.
    """
    ratios = []
    for key, limit in targets.items():
        measure = MEASURE_KEYS.get(key.removesuffix("_s"), "")
        p90 = quantiles.get((measure, QUANTILE))
        if p90 is None:
            continue
        p90 = capped_p90(p90, (means or {}).get(measure))
        if math.isfinite(p90) and limit > 0:
            ratios.append(p90 / limit)
    return max(ratios) if ratios else None


# The histograms' _sum and _count sample names -> (the snapshot's key, 0 for the sum or 1 for the count).
SUM_COUNT = {HISTOGRAMS[key] + suffix: (key, slot) for key in MEASURE_KEYS.values()
             for slot, suffix in enumerate(("_sum", "_count"))}


@dataclass
class WindowMeans:
    """Each measure's mean over the window, from its histogram's _sum and _count in each engine scrape.

    Fed like engine_stats.EngineStatsDeriver (samples, monotonic time, the engine's process start time)
    and on the same CounterVector, so resets and restarts are handled as for its rates; a changed set of
    series starts the history again.
    """

    window_s: float = 60.0
    _vector: CounterVector | None = None
    _layout: tuple[tuple[str, int], ...] = ()
    _start_time: float | None = None

    def update(self, samples: Iterable[Sample], now: float, process_start_time: float | None = None
               ) -> dict[str, float]:
        restarted = (process_start_time is not None and self._start_time is not None
                     and process_start_time != self._start_time)
        if process_start_time is not None:
            self._start_time = process_start_time
        totals: dict[tuple[str, int], float] = {}
        for name, _, value in samples:
            slot = SUM_COUNT.get(name)
            if slot is not None:
                totals[slot] = totals.get(slot, 0.0) + value
        layout = tuple(sorted(totals))
        if layout != self._layout or self._vector is None:
            self._layout, self._vector = layout, CounterVector(horizon_s=self.window_s)
        self._vector.observe(now, [totals[slot] for slot in layout], restarted)
        increases = self._vector.increase(self.window_s, now)
        if increases is None:
            return {}
        increase = dict(zip(layout, increases))
        means = {}
        for key, slot in layout:
            total, count = increase.get((key, 0)), increase.get((key, 1))
            if slot == 1 and total is not None and count and count > 0 and math.isfinite(total):
                means[key] = total / count
        return means

    def clear(self) -> None:
        self._vector, self._layout = None, ()


def clamp(value: float, low: float = CLAMP[0], high: float = CLAMP[1]) -> float:
    return min(max(value, low), high)


def ewma(previous: float | None, sample: float, dt_s: float, time_constant_s: float) -> float:
    """The average after `sample` arrives dt_s after the previous one; the first sample as is."""
    if previous is None:
        return sample
    weight = 1.0 - math.exp(-max(dt_s, 0.0) / time_constant_s)
    return previous + weight * (sample - previous)


def is_idle(stats: EngineStats) -> bool:
    """No request running and none waiting, as the engine's gauges say (unknown without them: not idle)."""
    running, waiting = stats.gauges.get("running_requests"), stats.gauges.get("queue_depth")
    return running is not None and waiting is not None and running + waiting == 0


@dataclass
class Headroom:
    """Each SLO's smoothed headroom, fed one engine snapshot per scrape (monotonic seconds)."""

    targets: dict[str, dict[str, float]]  # exact_targets(spec)
    time_constant_s: float = DEFAULT_TIME_CONSTANT_S
    values: dict[str, float] = field(default_factory=dict)  # absent: no sample yet
    _last_update: dict[str, float] = field(default_factory=dict)

    def update(self, stats: EngineStats | None, now: float, means: Mapping[str, float] | None = None
               ) -> dict[str, float]:
        if stats is None:
            return self.values
        idle = is_idle(stats)
        for name, targets in self.targets.items():
            raw = raw_headroom(targets, stats.quantiles, means)
            if raw is None:
                if not idle:
                    continue  # requests in flight, none measured: hold
                raw = 0.0
            last = self._last_update.get(name)
            self.values[name] = ewma(self.values.get(name), clamp(raw), 0.0 if last is None else now - last,
                                     self.time_constant_s)
            self._last_update[name] = now
        return self.values

    @property
    def overall(self) -> float | None:
        return max(self.values.values(), default=None)

    def clear(self) -> None:
        self.values, self._last_update = {}, {}


class HeadroomReader:
    """Feeds the headroom after each engine scrape (an engine_collector.ScrapeReader): `stats` answers the
    snapshot the engine collector derived from that scrape just before; the means come from its samples."""

    families = SampleFilter(HISTOGRAMS[key] for key in MEASURE_KEYS.values())  # their _sum and _count

    def __init__(self, headroom: Headroom, stats: Callable[[], EngineStats | None], window_s: float = 60.0):
        self.headroom = headroom
        self.stats = stats
        self.means = WindowMeans(window_s=window_s)

    def update(self, samples: list[Sample], now: float, process_start_time: float | None = None) -> object:
        means = self.means.update(samples, now, process_start_time)
        return self.headroom.update(self.stats(), now, means)

    def clear(self) -> None:
        self.headroom.clear()
        self.means.clear()


def utilisation(request_rate: float | None, capacity_rps: float | None) -> float | None:
    """Requests per second over the measured capacity; None without either."""
    if request_rate is None or capacity_rps is None or not capacity_rps > 0 or not math.isfinite(request_rate):
        return None
    return request_rate / capacity_rps


# --- the report -------------------------------------------------------------------------------------

def read_capacity_report(path: str | Path) -> float:
    """capacity_rps from a report of `slo-sidecar capacity --json`; ValueError with the reason otherwise."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text: expected the JSON report of `slo-sidecar capacity --json`") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ValueError("not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object: the report of `slo-sidecar capacity --json`")
    version = data.get("version")
    if version != CAPACITY_VERSION:
        raise ValueError(f"version: expected {CAPACITY_VERSION!r}, got {version!r}")
    if "capacity_rps" not in data:
        raise ValueError("capacity_rps: missing")
    rps = data["capacity_rps"]
    if rps is None:
        raise ValueError("capacity_rps: null (the measurement found no rate that meets every SLO: "
                         "rerun `slo-sidecar capacity` at lower rates)")
    try:
        finite = not isinstance(rps, bool) and isinstance(rps, (int, float)) and math.isfinite(float(rps))
    except OverflowError:
        finite = False
    if not finite or rps <= 0:
        raise ValueError(f"capacity_rps: expected a number > 0, got {rps!r}")
    return float(rps)


# --- the families -----------------------------------------------------------------------------------

class HeadroomCollector:
    """prometheus_client custom collector: the headroom and utilisation at scrape time, while `fresh()`."""

    def __init__(self, headroom: Headroom, fresh: Callable[[], bool],
                 request_rate: Callable[[], float | None] = lambda: None, capacity_rps: float | None = None):
        self.headroom = headroom
        self.fresh = fresh
        self.request_rate = request_rate
        self.capacity_rps = capacity_rps

    def collect(self) -> Iterable[Metric]:
        if self.capacity_rps is not None:  # the report's figure, not the engine's: served stale or not
            yield GaugeMetricFamily(CAPACITY, "Highest request rate at which this pod met every SLO of its spec, "
                                    "from the capacity report (slo-sidecar capacity).", value=self.capacity_rps)
        if not self.fresh():
            return
        yield from headroom_families(self.headroom.values)
        used = utilisation(self.request_rate(), self.capacity_rps)
        if used is not None:
            yield GaugeMetricFamily(UTILISATION, "Finished requests per second over the rate window divided by "
                                    "the capacity report's capacity_rps (1: at the measured SLO capacity).",
                                    value=used)


def headroom_families(values: Mapping[str, float]) -> list[Metric]:
    """The per-SLO and overall families; none while no SLO has a value."""
    if not values:
        return []
    per_slo = GaugeMetricFamily(HEADROOM, "Worst p90 / target over the SLO's exact latency targets, over the rate "
                                "window, smoothed (EWMA) and clamped to 0-4: 1 at the target, 0 when idle.",
                                labels=["slo"])
    for name, value in sorted(values.items()):
        per_slo.add_metric([name], value)
    overall = GaugeMetricFamily(OVERALL, "The largest slo_headroom_ratio of the pod: what the HPA scales on.",
                                value=max(values.values()))
    return [per_slo, overall]
