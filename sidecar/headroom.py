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
from typing import Callable, Iterable, Mapping, Protocol

from prometheus_client.core import GaugeMetricFamily, Metric

from slo_sidecar.spec import capacity_report
from slo_sidecar.spec.model import Spec

from .engine_snapshot import EngineSnapshot

QUANTILE = 0.9
DEFAULT_TIME_CONSTANT_S = 60.0
CLAMP = (0.0, 4.0)
# The measures of the spec's targets (`<measure>_s`) -> the engine snapshot's quantile keys.
MEASURE_KEYS = {"ttft": "ttft", "tpot": "tpot", "e2e": "e2e", "queue": "queue_time"}
REQUEST_RATE = "finished_requests_per_second"  # engine_snapshot's rate of vllm:request_success_total

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


def clamp(value: float, low: float = CLAMP[0], high: float = CLAMP[1]) -> float:
    return min(max(value, low), high)


def ewma(previous: float | None, sample: float, dt_s: float, time_constant_s: float) -> float:
    """The average after `sample` arrives dt_s after the previous one; the first sample as is."""
    if previous is None:
        return sample
    weight = 1.0 - math.exp(-max(dt_s, 0.0) / time_constant_s)
    return previous + weight * (sample - previous)


class Observed(Protocol):
    """What the headroom reads of an engine snapshot."""

    gauges: Mapping[str, float]
    quantiles: Mapping[tuple[str, float], float]


def is_idle(stats: Observed) -> bool:
    """No request running and none waiting, as the engine's gauges say (unknown without them: not idle)."""
    running, waiting = stats.gauges.get("running_requests"), stats.gauges.get("queue_depth")
    return running is not None and waiting is not None and running + waiting == 0


@dataclass
class Headroom:
    """Each SLO's smoothed headroom, fed one engine snapshot per scrape (monotonic seconds)."""

    targets: dict[str, dict[str, float]]  # exact_targets(spec)
    metrics = ()  # reads nothing of a scrape beyond the snapshot (engine_poller.SnapshotConsumer)
    time_constant_s: float = DEFAULT_TIME_CONSTANT_S
    values: dict[str, float] = field(default_factory=dict)  # absent: no sample yet
    _last_update: dict[str, float] = field(default_factory=dict)

    def take(self, snapshot: EngineSnapshot) -> dict[str, float]:
        return self.update(snapshot, snapshot.monotonic, snapshot.means)

    def update(self, stats: Observed | None, now: float, means: Mapping[str, float] | None = None
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
    return capacity_report.from_json(text).usable_capacity_rps()


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
