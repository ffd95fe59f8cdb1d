"""The sidecar's probe: a minimal real generation request to its engine every probe interval.

Why: the engine counts the requests it serves, so while it is dead, loading or hung, users'
requests reach nobody who counts them and an availability SLI on the engine's counters reads
100% through the outage. Each unanswered probe stands for the requests users sent in its
interval, at the service's rate over the last hour before the outage (at least one), and is
counted as missed (`slo_probe_missed_requests_total`), which availability SLIs add to their
errors and their total alike: a dead engine's error ratio is 100% and burns the budget at the
rate users lost requests. Probes start once the engine has been seen (a pod still starting
up is not an outage) and are marked so that the engine does not count them as users' requests.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Callable

import aiohttp
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from slo_sidecar.spec.model import PROBE_COUNTER, PROBE_HEADER, PROBE_MISSED

from .config import SidecarConfig
from .exposition import Sample
from .slo_tracker import SloTracker

RESULTS = ("success", "error", "unanswered", "draining")
PROBE_BODY = {"prompt": "ping", "max_tokens": 1, "temperature": 0}
NOT_READY = 503  # loading or draining: up, but serving nobody
NOT_READY_CODES = ("unavailable", "")  # the error codes of a 503 that means not ready

log = logging.getLogger("slo_sidecar.sidecar.probe")


def result_of(status: int | None, code: str = "") -> str:
    """success for 2xx; draining for an orderly shutdown (users are sent to other pods: nothing lost);
    unanswered for no answer or not ready; error for any other answer (the engine counts users'
    requests that fail that way itself).

    Not ready is a 503 that says so ("unavailable": loading, or its engine gone) or says nothing (a proxy's
    page). A 503 that names another code was served and counted: vLLM's own admission limit answers 503
    with `"code": 503` when it is full, an error like any other."""
    if status == NOT_READY and code == "draining":
        return "draining"
    if status is None or status == NOT_READY and code in NOT_READY_CODES:
        return "unanswered"
    return "success" if 200 <= status < 300 else "error"


def error_code(body: bytes) -> str:
    """The OpenAI-style error body's code, or "" for anything else."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return ""
    return str(error.get("code", "")) if isinstance(error, dict) else ""


class Prober:
    """A poller (the process runs it on its interval) that probes and counts."""

    name = "probe"
    error_reasons: tuple[str, ...] = ()

    def __init__(self, config: SidecarConfig, tracker: SloTracker, now: Callable[[], float] = time.time):
        self.url = (config.probe_url or config.engine_url) + "/v1/completions"
        self.headers = {PROBE_HEADER: "1"}
        if config.engine_api_key:
            self.headers["Authorization"] = "Bearer " + config.engine_api_key
        self.interval_s = config.probe_interval_s
        self.probe_timeout_s = config.probe_timeout_s
        self.timeout_s = config.probe_timeout_s + 1.0
        self.backoff_max_s = config.probe_interval_s
        self.tracker = tracker
        self.now = now
        self.counts = dict.fromkeys(RESULTS, 0)
        self.missed = 0.0
        self.weight: float | None = None  # requests one unanswered probe stands for, fixed at an outage's onset
        self.rate_answered = 0.0  # the service's request rate (per second, over an hour) at the last answer
        self._warned_status: int | None = None
        self._session: aiohttp.ClientSession | None = None

    async def poll(self) -> list[Metric]:
        identity = self.tracker.service_identity()
        if identity is None:  # the engine has never been seen: nothing is lost yet
            return []
        self.record(result_of(*await self._send()), identity)
        return self.families(identity)

    def record(self, result: str, identity: dict[str, str]) -> None:
        self.counts[result] += 1
        if result == "draining":
            return
        if result == "unanswered":
            if self.weight is None:
                self.weight = self.stand_in()
            self.missed += self.weight
        else:  # answered: the rate users send at now is what the next outage will cost
            self.weight, self.rate_answered = None, self.tracker.recent_rate(PROBE_MISSED, self.now())
        self.tracker.observe([Sample(PROBE_MISSED, tuple(identity.items()), self.missed)], self.now())

    async def _send(self) -> tuple[int | None, str]:
        """The answer's status (None: no answer in time) and its error code, if any."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.probe_timeout_s))
        try:
            async with self._session.post(self.url, json=PROBE_BODY, headers=self.headers) as response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None, ""
        if 400 <= status < 500 and status != self._warned_status:
            self._warned_status = status  # a probe the engine refuses proves nothing: say so once
            log.warning("the engine refused the probe with %d (an API key it needs? engine_api_key)", status)
        return status, error_code(body)

    def families(self, identity: dict[str, str]) -> list[Metric]:
        keys, values = list(identity), list(identity.values())
        requests = CounterMetricFamily(PROBE_COUNTER.removesuffix("_total"),
                                       "Probe requests to the engine, by result: success, error (answered "
                                       "with a failure), unanswered (no answer, a timeout, or not ready) or "
                                       "draining (an orderly shutdown: nothing lost).",
                                       labels=["result", *keys])
        for result in RESULTS:
            requests.add_metric([result, *values], self.counts[result])
        missed = CounterMetricFamily(PROBE_MISSED.removesuffix("_total"),
                                     "Requests users are estimated to have lost while the engine did not "
                                     "answer: each unanswered probe counts the requests of one probe interval "
                                     "at the service's recent rate (at least one).", labels=keys)
        missed.add_metric(values, self.missed)
        weight = GaugeMetricFamily("slo_probe_weight_requests", "Requests an unanswered probe stands for now "
                                   "(the service's recent rate x the probe interval, at least 1).", labels=keys)
        weight.add_metric(values, self.weight if self.weight is not None else self.stand_in())
        return [requests, missed, weight]

    def stand_in(self) -> float:
        """Requests users send in one probe interval at the rate measured while the engine last answered."""
        return max(1.0, self.rate_answered * self.interval_s)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
