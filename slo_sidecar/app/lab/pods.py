"""Synthetic pods: the series one engine and its sidecar expose, scrape by scrape, for a traffic story.

A story says, t seconds after the incident's onset (negative before it), how many requests users send,
which share of them fail (5xx), miss their first-token target, are client errors (400) or are
abandoned by their client (499), and whether the engine is serving, loading (listening, /ready 503)
down (not listening) or gone with its whole pod, sidecar and all. The engine counts what it answers, as ours does: client errors and
disconnects are not judged, and a failed request misses every latency target. While it does not
serve, users' requests are lost uncounted, and the sidecar's probe (every 10 s) counts each
unanswered one as the requests of its interval (model.PROBE_MISSED). A restart resets the engine's
counters. The sidecar's golden probes (every 10 s too) score right whenever the engine serves, and its
data-corrupting GPU XIDs stay at 0: none of these stories is a wrong answer. The GPUs are 90% busy while the
engine serves and idle while it does not.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

from slo_sidecar.spec.model import (
    DATA_CORRUPTING_XIDS,
    GOLDEN_BAD_IN_A_ROW,
    GOLDEN_PROBES,
    GPU_CORRUPTING_XIDS,
    GPU_UTILIZATION,
    HTTP_REQUESTS,
    PROBE_MISSED,
    SLO_COUNTER,
)

from .replay import Series

ENDPOINT = "/v1/completions"
PROBE_INTERVAL_S = 10
LATENCY_SLOS = ("ttft", "e2e-latency", "queue-time", "goodput")
MISSES_TTFT = ("ttft", "goodput")  # a slow first token misses these
MODEL = "lab-model"
NOT_RUNNING = ("down", "gone")  # no engine process answers its scrapes
GPU_BUSY = 0.9  # the GPUs' utilisation while the engine serves; 0 while it does not (none loaded or down)


def constant(value: float) -> Callable[[float], float]:
    return lambda t: value


@dataclass
class Story:
    rate: Callable[[float], float] = constant(2.0)  # requests users send per second
    failed: Callable[[float], float] = constant(0.0)  # share answered 5xx
    slow_ttft: Callable[[float], float] = constant(0.0)  # share of the answered that missed the TTFT target
    client_errors: Callable[[float], float] = constant(0.0)  # share answered 400
    disconnects: Callable[[float], float] = constant(0.0)  # share abandoned by their client (499)
    state: Callable[[float], str] = constant("serving")  # serving, loading, down, or gone (the whole pod)
    single_failures: tuple[float, ...] = ()  # one extra 5xx at each of these times
    restarts: tuple[float, ...] = ()  # counter resets (besides every return from `down`)


@dataclass
class Pod:
    namespace: str
    story: Story
    counters: dict[tuple, float] = field(default_factory=lambda: defaultdict(float))
    missed: float = 0.0
    golden_good: float = 0.0

    def labels(self, job: str, **extra: str) -> dict[str, str]:
        port = 8000 if job == "engine" else 9400
        return {"namespace": self.namespace, "model_name": MODEL, "job": job,
                "instance": f"{job}-{self.namespace}:{port}", **extra}

    def series(self, onset: float, start: float, end: float, scrape_s: int) -> list[Series]:
        """Every series, scraped every scrape_s from start to end (unix seconds), onset at `onset`."""
        samples: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
        kinds: dict[tuple, str] = {}

        def add(name: str, labels: dict[str, str], kind: str, t: float, value: float) -> None:
            key = (name, tuple(sorted(labels.items())))
            kinds[key] = kind
            samples[key].append((t, value))

        story, previous_state = self.story, "serving"
        t = start
        while t <= end:
            rel = t - onset
            state = story.state(rel)
            returned = previous_state in NOT_RUNNING and state not in NOT_RUNNING
            if returned or any(t - scrape_s < onset + r <= t for r in story.restarts):
                self.counters.clear()  # a new engine process
            self._advance(rel - scrape_s, rel, state)
            previous_state = state
            engine_up = state not in NOT_RUNNING
            add("up", self.labels("engine"), "gauge", t, float(engine_up))
            add("up", self.labels("sidecar"), "gauge", t, float(state != "gone"))
            if state != "gone":  # the sidecar lives
                add("sidecar_collector_up", self.labels("sidecar", collector="engine"), "gauge", t,
                    float(engine_up))
                add(PROBE_MISSED, self.labels("sidecar"), "counter", t, self.missed)
                add(GOLDEN_PROBES, self.labels("sidecar", result="good"), "counter", t, self.golden_good)
                add(GOLDEN_PROBES, self.labels("sidecar", result="bad"), "counter", t, 0.0)
                add(GOLDEN_BAD_IN_A_ROW, self.labels("sidecar"), "gauge", t, 0.0)
                for xid in DATA_CORRUPTING_XIDS:
                    add(GPU_CORRUPTING_XIDS, self.labels("sidecar", xid=str(xid)), "counter", t, 0.0)
                add(GPU_UTILIZATION, self.labels("sidecar"), "gauge", t, GPU_BUSY if state == "serving" else 0.0)
            if engine_up:
                add("slo_engine_ready", self.labels("engine"), "gauge", t, 1.0 if state == "serving" else 0.0)
                for code in ("200", "400", "499", "500", "429"):
                    add(HTTP_REQUESTS, self.labels("engine", endpoint=ENDPOINT, code=code),
                        "counter", t, self.counters[("http", code)])
                for slo in LATENCY_SLOS:
                    for good in ("true", "false"):
                        add(SLO_COUNTER, self.labels("engine", slo=slo, good=good), "counter", t,
                            self.counters[(slo, good)])
            t += scrape_s
        return [Series(name, dict(labels), kinds[(name, labels)], points)
                for (name, labels), points in samples.items()]

    def _advance(self, since: float, until: float, state: str) -> None:
        """Count what happened in (since, until]: users' requests if serving, probes if not."""
        story, dt, mid = self.story, until - since, (since + until) / 2
        probes = int(until // PROBE_INTERVAL_S) - int(since // PROBE_INTERVAL_S)
        if state == "serving":
            self.golden_good += probes
            users = story.rate(mid) * dt
            failed, gone, bad = (users * story.failed(mid), users * story.disconnects(mid),
                                 users * story.client_errors(mid))
            failed += sum(1 for f in story.single_failures if since < f <= until)
            ok = max(0.0, users - failed - gone - bad)
            for code, count in (("200", ok), ("500", failed), ("499", gone), ("400", bad)):
                self.counters[("http", code)] += count
            slow = ok * story.slow_ttft(mid)
            for slo in LATENCY_SLOS:
                missed = failed + (slow if slo in MISSES_TTFT else 0.0)
                self.counters[(slo, "false")] += missed
                self.counters[(slo, "true")] += failed + ok - missed
        elif state != "gone":  # each probe in the interval goes unanswered and stands for its interval's requests
            self.missed += probes * max(1.0, story.rate(mid) * PROBE_INTERVAL_S)
