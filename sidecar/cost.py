"""Live serving cost: what a million generated tokens cost at the GPUs' hourly price, tokens per GPU-hour,
and each tenant's part of the bill, shared by weighted tokens (docs/tenants.md, "What each tenant costs":
the formula, and why tokens rather than GPU time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from prometheus_client.core import GaugeMetricFamily, Metric

from slo_sidecar.spec.model import TENANT_LABEL

from .engine_snapshot import TenantTokenRates

# A prompt token costs a quarter of a generated one unless configured (prompt_token_weight).
DEFAULT_PROMPT_TOKEN_WEIGHT = 0.25

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


@dataclass(frozen=True)
class TenantCost:
    share: float  # of the pod's weighted tokens, 0-1
    usd_per_hour: float
    usd_per_million_tokens: float | None  # None: no tokens in the window
    usd_per_million_good_tokens: float | None  # None: no good tokens (or none counted) in the window


def weighted_tokens(rates: TenantTokenRates, prompt_token_weight: float) -> float:
    return rates.generation + rates.prompt * prompt_token_weight


def tenant_costs(pod_usd_per_hour: float, rates: Mapping[str, TenantTokenRates],
                 prompt_token_weight: float = DEFAULT_PROMPT_TOKEN_WEIGHT) -> dict[str, TenantCost]:
    """Each tenant's share of the pod's cost per hour, by weighted tokens, and what its tokens cost."""
    weighted = {model: weighted_tokens(r, prompt_token_weight) for model, r in rates.items()}
    total = sum(weighted.values())
    costs = {}
    for model, r in rates.items():
        share = weighted[model] / total if total > 0 else 0.0
        usd_per_hour = pod_usd_per_hour * share
        tokens_per_hour = (r.prompt + r.generation) * 3600
        good_per_hour = (r.good or 0.0) * 3600
        costs[model] = TenantCost(
            share, usd_per_hour,
            usd_per_hour / tokens_per_hour * 1e6 if tokens_per_hour > 0 else None,
            usd_per_hour / good_per_hour * 1e6 if good_per_hour > 0 else None,
        )
    return costs


class CostCollector:
    """prometheus_client custom collector: the figures at scrape time, from the collectors' latest values.

    `tenant_rates` answers None when there is nothing fresh to apportion (the
    engine's values stale or never read): the tenant families are then withdrawn,
    as the per-token pod figures are when `generation_rate` answers None.
    """

    def __init__(self, gpu_hourly_usd: float, gpus: Callable[[], int], generation_rate: Callable[[], float | None],
                 tenant_rates: Callable[[], Mapping[str, TenantTokenRates] | None] = lambda: None,
                 prompt_token_weight: float = DEFAULT_PROMPT_TOKEN_WEIGHT):
        self.gpu_hourly_usd = gpu_hourly_usd
        self.gpus = gpus
        self.generation_rate = generation_rate
        self.tenant_rates = tenant_rates
        self.prompt_token_weight = prompt_token_weight

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
        rates = self.tenant_rates()
        if rates:
            yield from tenant_families(tenant_costs(figures.pod_usd_per_hour, rates, self.prompt_token_weight))


def tenant_families(costs: Mapping[str, TenantCost]) -> list[Metric]:
    """The per-tenant families, labelled `model`; a figure a tenant lacks is left out for it."""
    share = GaugeMetricFamily("sidecar_tenant_token_share_ratio",
                              "Tenant's share of the pod's weighted tokens over the rate window (generated + "
                              "prompt x prompt_token_weight), 0-1: its part of the GPU cost.", labels=[TENANT_LABEL])
    per_hour = GaugeMetricFamily("sidecar_tenant_cost_usd_per_hour",
                                 "Tenant's part of the pod's GPU cost per hour, by its token share.",
                                 labels=[TENANT_LABEL])
    per_million = GaugeMetricFamily("sidecar_tenant_cost_usd_per_million_tokens",
                                    "Tenant's GPU cost of a million of its tokens (prompt + generated) over the "
                                    "rate window; absent when it had none.", labels=[TENANT_LABEL])
    per_million_good = GaugeMetricFamily("sidecar_tenant_cost_usd_per_million_good_tokens",
                                         "Tenant's GPU cost of a million generated tokens of requests that met "
                                         "every exact SLO target, over the rate window; absent when none.",
                                         labels=[TENANT_LABEL])
    for model, cost in sorted(costs.items()):
        share.add_metric([model], cost.share)
        per_hour.add_metric([model], cost.usd_per_hour)
        if cost.usd_per_million_tokens is not None:
            per_million.add_metric([model], cost.usd_per_million_tokens)
        if cost.usd_per_million_good_tokens is not None:
            per_million_good.add_metric([model], cost.usd_per_million_good_tokens)
    return [family for family in (share, per_hour, per_million, per_million_good) if family.samples]
