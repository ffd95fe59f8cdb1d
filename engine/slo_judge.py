"""Exact SLO counters: every generation request judged once, at its end, against each target of the spec.

Histograms cannot give an exact SLI: a threshold between two bucket bounds is
interpolated, a request that failed never records a TTFT, and separate
histograms cannot say whether one request met all its targets at once
(goodput). So the engine judges each request itself, against every target of
the spec's exact latency SLOs and goodput SLOs, and counts it in
`slo_engine_slo_requests_total{slo, good}`; the sidecar and the rules treat
that like any other SLI.

Latencies are the server's, as the client sees them: from the request's
arrival at the HTTP server (so admission and queueing count) to the tokens it
had ready to send. A target is met when the latency is at or under it. A
request that ended with a server error (5xx: failed, timed out, engine gone,
not ready) misses every target; a client error (4xx, 429 included: the
availability SLO counts refusals) and a client that went away (499) are not
judged.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from slo_sidecar.spec.model import GOODPUT_TOKENS, SLO_COUNTER, TENANT_LABEL, Spec

from .metrics import UNKNOWN_MODEL


@dataclass(frozen=True)
class RequestLatencies:
    """One request's latencies in seconds; None where it cannot be known (no token, no vLLM stats)."""

    ttft_s: float | None
    tpot_s: float | None  # time per output token after the first: (e2e - ttft) / (tokens - 1), 0 for one token
    e2e_s: float
    queue_s: float | None  # vLLM's: scheduled - queued


def is_good(targets: dict[str, float], measured: RequestLatencies | None) -> bool:
    """Every target met; a failed request (None) or a latency that cannot be known is not good."""
    if measured is None:
        return False
    for key, limit in targets.items():
        value = getattr(measured, key)
        if value is None or value > limit:
            return False
    return True


def judged(status: int | None) -> bool:
    """Succeeded (None) or a server error; client errors and disconnects say nothing of the service."""
    return status is None or status >= 500


class SloJudge:
    """Counts each request by SLO, verdict and tenant (`model`: the served name it asked for, one of
    `models`, or UNKNOWN_MODEL), so a sliced SLO reads 2 series per tenant."""

    def __init__(self, spec: Spec | None, registry: CollectorRegistry, models: tuple[str, ...] = ()):
        # A sliced SLO's slices share its name and targets: the engine judges each name once.
        self.targets = {slo.name: slo.sli.targets for slo in (spec.slos if spec else ()) if slo.sli.targets}
        self.counter = Counter(SLO_COUNTER.removesuffix("_total"),
                               "Generation requests judged at their end against every target of an exact "
                               "latency or goodput SLO: good when all were met; server errors are never good.",
                               ["slo", "good", TENANT_LABEL], registry=registry)
        self.good_tokens = Counter(GOODPUT_TOKENS.removesuffix("_total"),
                                   "Tokens generated for requests that met every target of every exact latency "
                                   "and goodput SLO, by tenant: the tokens that count as goodput.",
                                   [TENANT_LABEL], registry=registry)
        for model in (*models, UNKNOWN_MODEL):  # every series an SLI reads exists from the first scrape
            for name in self.targets:
                for good in ("true", "false"):
                    self.counter.labels(name, good, model)
        for model in models:
            self.good_tokens.labels(model)

    def count(self, measured: RequestLatencies | None, completion_tokens: int, model: str,
              status: int | None) -> None:
        """One request's verdicts from its latencies (None: it failed); status: the HTTP status it ended with
        (None: succeeded)."""
        if not self.targets or not judged(status):
            return
        all_good = True
        for name, targets in self.targets.items():
            good = is_good(targets, measured)
            all_good = all_good and good
            self.counter.labels(name, "true" if good else "false", model).inc()
        if all_good:
            self.good_tokens.labels(model).inc(completion_tokens)
