"""Live serving cost: what a million generated tokens cost at the GPUs' hourly price, and tokens per GPU-hour.

The reference design's cost analysis divides a monthly GPU bill by a month of
tokens; the sidecar does the same with the generation rate it measures over its
rate window, so the figure moves with batching, load and preemption.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from prometheus_client.core import GaugeMetricFamily, Metric


@dataclass(frozen=True)
class CostFigures:
    pod_usd_per_hour: float
    usd_per_million_tokens: float | None  # None while nothing is generated: the cost per token is unbounded
    tokens_per_gpu_hour: float | None


def cost_figures(gpu_hourly_usd: float, gpus: int, generation_tokens_per_second: float | None) -> CostFigures:
    pod_usd_per_hour = gpu_hourly_usd * gpus
    if generation_tokens_per_second is None:
        return CostFigures(pod_usd_per_hour, None, None)
    tokens_per_hour = generation_tokens_per_second * 3600
    return CostFigures(
        pod_usd_per_hour,
        pod_usd_per_hour / tokens_per_hour * 1e6 if tokens_per_hour > 0 else None,
        tokens_per_hour / gpus,
    )


class CostCollector:
    """prometheus_client custom collector: the figures at scrape time, from the collectors' latest values."""

    def __init__(self, gpu_hourly_usd: float, gpus: Callable[[], int], generation_rate: Callable[[], float | None]):
        self.gpu_hourly_usd = gpu_hourly_usd
        self.gpus = gpus
        self.generation_rate = generation_rate

    def collect(self) -> Iterable[Metric]:
        figures = cost_figures(self.gpu_hourly_usd, self.gpus(), self.generation_rate())
        yield GaugeMetricFamily("sidecar_cost_usd_per_hour", "What this pod's GPUs cost per hour, at the "
                                "configured price per GPU-hour.", value=figures.pod_usd_per_hour)
        if figures.usd_per_million_tokens is not None:
            yield GaugeMetricFamily("sidecar_cost_usd_per_million_generated_tokens",
                                    "GPU cost of a million generated tokens at the generation rate over the "
                                    "rate window.", value=figures.usd_per_million_tokens)
        if figures.tokens_per_gpu_hour is not None:
            yield GaugeMetricFamily("sidecar_generated_tokens_per_gpu_hour",
                                    "Generated tokens per GPU-hour at the generation rate over the rate window.",
                                    value=figures.tokens_per_gpu_hour)
