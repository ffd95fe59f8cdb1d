"""Goodput: the share of requests that met every latency target at once, counted per request.

Separate histograms cannot say it (a request fast to its first token may be
slow between tokens), so the engine judges each finished request against the
targets of the SLO spec's goodput SLOs and counts it good or bad; the sidecar
and the rules then treat it like any other SLI. Latencies are the server's,
as the client sees them: from the request's arrival at the HTTP server (so
admission and queueing count) to the tokens it had ready to send.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from slo_spec.model import GOODPUT_COUNTER, Spec

CLIENT_CLOSED = 499


@dataclass(frozen=True)
class RequestLatencies:
    ttft_s: float
    inter_token_s: float  # mean time per output token after the first
    e2e_s: float


def latencies(tally: Any, started_at: float, finished_at: float) -> RequestLatencies | None:
    """From the generation's tally (monotonic times); None if no token came."""
    if tally.first_token_at is None:
        return None
    tokens = tally.completion_tokens
    inter_token = (tally.last_token_at - tally.first_token_at) / (tokens - 1) if tokens > 1 else 0.0
    return RequestLatencies(tally.first_token_at - started_at, inter_token, finished_at - started_at)


def is_good(targets: dict[str, float], measured: RequestLatencies | None) -> bool:
    """Every target met; a request with no first token (it failed) is not good."""
    if measured is None:
        return False
    return all(getattr(measured, key) <= limit for key, limit in targets.items())


class GoodputCounter:
    def __init__(self, spec: Spec | None, registry: CollectorRegistry):
        self.targets = {slo.name: slo.sli.goodput_targets for slo in (spec.slos if spec else ())
                        if slo.sli.kind == "goodput"}
        self.counter = Counter(GOODPUT_COUNTER.removesuffix("_total"),
                               "Finished generation requests by whether they met every latency target of the "
                               "goodput SLO at once.", ["slo", "good"], registry=registry)
        for name in self.targets:
            for good in ("true", "false"):
                self.counter.labels(name, good)

    def record(self, tally: Any, started_at: float, status: int | None) -> None:
        """status: the HTTP status the request ended with (None: succeeded). Client aborts are not judged."""
        if not self.targets or status == CLIENT_CLOSED:
            return
        measured = None if status is not None else latencies(tally, started_at, time.monotonic())
        for name, targets in self.targets.items():
            self.counter.labels(name, "true" if is_good(targets, measured) else "false").inc()
