"""The sidecar's golden probes: every `correctness.interval_s`, one item of the golden set, in turn, scored
against the live engine and judged against the baseline recorded before the rollout (spec/golden.py).

A probe the engine does not answer (or answers with an error) is availability's business: it raises PollError
and counts neither way. Readiness: with `correctness.quarantine`, the sidecar's /ready fails while the last
`bad_in_a_row` probes were bad, so the pod leaves its Service's endpoints (users stop getting wrong answers)
while it stays up for debugging; one good probe brings it back.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable

import aiohttp
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from slo_sidecar.iokit.golden_client import GoldenClient
from slo_sidecar.spec.golden import GoldenBaseline, GoldenError, GoldenSet, ItemVerdict
from slo_sidecar.spec.model import ENGINE_READY, GOLDEN_BAD_IN_A_ROW, GOLDEN_PROBES, PROBE_HEADER, Correctness

from .engine_snapshot import EngineSnapshot
from .exposition import Sample
from .poller import PollError
from .slo_tracker import SloTracker

RESULTS = ("good", "bad")
# A probe batched with LoRA requests crashes vLLM 0.32's engine core where lm_head carries LoRA (vLLM#16668):
# without our middleware's guard (engine/prompt_logprobs_guard.py), the sidecar cannot tell, and sends none.
UNGUARDED_LORA = ("the engine serves LoRA adapters without slo-sidecar's middleware: a golden probe "
                  "(prompt_logprobs) beside an lm_head LoRA crashes vLLM's engine core (vllm-project/vllm#16668), "
                  "and nothing here can tell whether its LoRA covers lm_head; no golden probes. Run vLLM with "
                  "--middleware slo_sidecar.engine.asgi.SloMiddleware and --lora-target-modules without lm_head")
log = logging.getLogger("slo_sidecar.sidecar.golden_probe")


class GoldenProber:
    name = "golden"
    error_reasons = ("unanswered", "unscorable", "other_model", "lora_unguarded")
    metrics = (ENGINE_READY,)  # an engine snapshot consumer (engine_poller.SnapshotConsumer): is it guarded?

    def __init__(self, engine_url: str, api_key: str, golden: GoldenSet, baseline: GoldenBaseline,
                 settings: Correctness, tracker: SloTracker, timeout_s: float = 10.0,
                 now: Callable[[], float] = time.time):
        self.engine_url = engine_url
        self.headers = {PROBE_HEADER: "1", **({"Authorization": "Bearer " + api_key} if api_key else {})}
        self.golden, self.baseline, self.settings = golden, baseline, settings
        self.tracker = tracker
        self.now = now
        self.interval_s = settings.interval_s
        self.timeout_s = timeout_s
        self.backoff_max_s = settings.interval_s
        self.counts = dict.fromkeys(RESULTS, 0)
        self.bad_in_a_row = 0
        self.last: dict[int, ItemVerdict] = {}
        self._next = 0
        self.engine_guarded = False  # our middleware serves the engine's API (it refuses what crashes it)
        self._session: aiohttp.ClientSession | None = None
        self._client: GoldenClient | None = None

    @property
    def quarantined(self) -> bool:
        """Whether readiness fails now: quarantine is on and the last bad_in_a_row probes were bad."""
        return self.settings.quarantine and self.bad_in_a_row >= self.settings.bad_in_a_row

    async def poll(self) -> list[Metric]:
        identity = self.tracker.service_identity()
        if identity is None:  # the engine has never been seen: nothing to judge yet
            return []
        index = self._next
        self._next = (index + 1) % len(self.golden.items)
        try:
            served, adapters = await self._scorer().served_models()
            if served != self.baseline.model:  # a baseline of another model would quarantine a healthy pod
                raise PollError("other_model", f"the golden baseline was recorded on {self.baseline.model!r}, "
                                f"the engine serves {served!r}: record one on this model "
                                f"(slo-sidecar validate --golden-out)")
            if adapters and not self.engine_guarded:
                raise PollError("lora_unguarded", UNGUARDED_LORA)
            score = await self._scorer().score(index)
        except GoldenError as error:
            raise PollError("unscorable", str(error)) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise PollError("unanswered", f"{self.engine_url}: {error or type(error).__name__}") from None
        self.record(ItemVerdict(index, self.baseline.scores[index], score, self.settings.tolerance))
        # The counts are the correctness SLI's (spec: `sli: correctness`): the tracker takes them as it takes
        # the engine's counters, for the live burn rates.
        self.tracker.observe([Sample(GOLDEN_PROBES, (("result", result), *identity.items()), float(count))
                              for result, count in self.counts.items()], self.now())
        return self.families(identity)

    def take(self, snapshot: EngineSnapshot) -> None:
        self.engine_guarded = bool(snapshot.scrape.samples(self.metrics))

    def clear(self) -> None:
        self.engine_guarded = False

    def record(self, verdict: ItemVerdict) -> None:
        self.last[verdict.index] = verdict
        result = "good" if verdict.good else "bad"
        self.counts[result] += 1
        was_quarantined = self.quarantined
        self.bad_in_a_row = 0 if verdict.good else self.bad_in_a_row + 1
        if not verdict.good:
            log.warning("golden item %d scored %.4f against a baseline of %.4f (moved %+.4f, tolerance %g)",
                        verdict.index, verdict.score, verdict.baseline, verdict.shift, verdict.tolerance)
        if self.quarantined != was_quarantined:
            log.warning("quarantine %s: %d bad golden probes in a row", "on" if self.quarantined else "off",
                        self.bad_in_a_row)

    def _scorer(self) -> GoldenClient:
        if self._client is None:
            self._session = aiohttp.ClientSession()
            self._client = GoldenClient(self._session, self.engine_url, self.golden, self.headers, self.timeout_s)
        return self._client

    def families(self, identity: dict[str, str]) -> list[Metric]:
        keys, values = list(identity), list(identity.values())
        probes = CounterMetricFamily(GOLDEN_PROBES.removesuffix("_total"),
                                     "Golden probes by result: good (the item scored within the tolerance of its "
                                     "recorded baseline) or bad. Unanswered probes are not counted here.",
                                     labels=["result", *keys])
        for result in RESULTS:
            probes.add_metric([result, *values], self.counts[result])
        shift = GaugeMetricFamily("slo_golden_score_shift", "Each golden item's last score minus its baseline, "
                                  "in nats per token (NaN: NaN logits).", labels=["item", *keys])
        for index, verdict in sorted(self.last.items()):
            shift.add_metric([str(index), *values], verdict.shift if math.isfinite(verdict.shift) else math.nan)
        in_a_row = GaugeMetricFamily(GOLDEN_BAD_IN_A_ROW, "Bad golden probes since the last good one.",
                                     labels=keys)
        in_a_row.add_metric(values, self.bad_in_a_row)
        quarantined = GaugeMetricFamily("slo_quarantined", "1 while the sidecar's readiness fails because the "
                                        "last golden probes were bad (correctness.quarantine).", labels=keys)
        quarantined.add_metric(values, 1.0 if self.quarantined else 0.0)
        return [probes, shift, in_a_row, quarantined]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
