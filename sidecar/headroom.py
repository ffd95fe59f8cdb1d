"""SLO headroom and capacity utilisation: how close the pod runs to its latency targets, live.

Headroom is an EWMA of the clamped p90/target ratio of each exact latency SLO's measures, read from
vLLM's histograms (capped by their exact means); utilisation is the finished-request rate over the
capacity report's capacity_rps. The formulas, and why p90, the cap, the smoothing and the clamp:
docs/sidecar.md, "How headroom and utilisation are computed". Pure code but for reading the report file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

from prometheus_client.core import GaugeMetricFamily, Metric

from slo_spec import capacity_report
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
    return capacity_report.capacity_rps(capacity_report.parse_report(text))


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
