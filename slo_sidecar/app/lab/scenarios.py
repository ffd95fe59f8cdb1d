"""The incidents the lab replays, each with what it must and must not fire (expect.py's arithmetic).

Every scenario is a service of its own (its namespace) in one Prometheus, so a scenario's alerts that
fire for another would show as that one's false fires. One replay: hours of incident after two hours
of clean traffic, with every rule file. The slow burns, whose alerts come hours or days in, are
Prometheus's own unit tests' (tests/test_alert_timing.py, tests/test_recorded_windows.py): promtool
replays them exactly, a minute at a time, where a backfilled replay would take minutes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from slo_sidecar.spec.model import GPU_UTILIZATION, NO_DATA_LOOKBACK, Spec, duration_seconds

from .expect import ERROR_RATE, fires_after, frozen_between, slo_alerts
from .pods import Story, constant

RATE = 2.0  # requests a second

Expected = dict[tuple[str, str], float]  # (alert, tier) -> seconds after onset


@dataclass(frozen=True)
class Replay:
    name: str
    history_s: int  # clean traffic before the onset
    horizon_s: int  # incident time replayed after it
    scrape_s: int
    step_s: int


SCRAPE_HOURS = 15
HOURS = Replay("hours", 2 * 3600, 6 * 3600, SCRAPE_HOURS, 15)


@dataclass(frozen=True)
class Release:
    """When the error-budget policy freezes releases and lifts them again, seconds after onset (None: never
    within the replay)."""
    frozen_s: float | None = None
    lifted_s: float | None = None


@dataclass
class Scenario:
    name: str
    namespace: str
    replay: Replay
    story: Story
    expected: Expected = field(default_factory=dict)
    why: str = ""  # the expectation in words
    release: Release | None = None  # the policy's verdict, where the scenario judges it


def _release(spec: Spec, misses: dict[str, float], replay: Replay, duration_s: float = math.inf) -> Release:
    """The service's releases: frozen while any SLO's policy freezes them (expect.frozen_between)."""
    spans = [frozen_between(slo.objective, slo.policy.freeze_below_budget, slo.period_s, misses.get(slo.name, 0.0),
                            replay.history_s, replay.horizon_s, duration_s)
             for slo in spec.slos if slo.policy is not None]
    frozen = [span for span in spans if span[0] is not None]
    if not frozen:
        return Release()
    lifts = [lifted for _, lifted in frozen]
    return Release(min(start for start, _ in frozen), None if None in lifts else max(lifts))


def _burns(spec: Spec, misses: dict[str, float], replay: Replay, rate: float = RATE,
           engine_errors: float = 0.0, duration_s: float = math.inf) -> Expected:
    """Each SLO's alerts for miss fractions by SLO name, from onset for duration_s, and the error-rate ticket
    for the share of requests the engine answered with an error."""
    expected: Expected = {}
    for slo in spec.slos:
        if misses.get(slo.name, 0.0) > 0:
            events = rate if slo.sli.timeslices is None else 1 / slo.sli.timeslices.slice_s  # slices, a second
            expected.update(slo_alerts(slo.alert_name, slo.objective, misses[slo.name], events,
                                       replay.history_s, replay.horizon_s, duration_s))
    after = fires_after(ERROR_RATE, 1.0, engine_errors, rate, replay.history_s, replay.horizon_s, duration_s)
    if after is not None:
        expected[("LLMHighErrorRate", "ticket")] = after
    return expected


def _down() -> Expected:
    """LLMServiceDown (page) and LLMEngineDown (ticket): the first scrape that fails (at onset), then `for: 2m`.
    (The replay sees a series that stopped one scrape late, where a live Prometheus marks it stale at
    once: LLMServiceDown, which waits for the engine's readiness series to vanish, shows a scrape later.)"""
    return {("LLMServiceDown", "page"): 120.0, ("LLMEngineDown", "ticket"): 120.0}


def _every_slo(spec: Spec, miss: float) -> dict[str, float]:
    """A failed request misses every latency target too: every SLO sees the same miss fraction, but correctness
    (its golden probes are not users' requests, and a failed one counts neither way) and the time-slice ones
    (the GPUs are as busy answering with an error)."""
    return {slo.name: miss for slo in spec.slos if slo.sli.kind not in ("correctness", "timeslices")}


def _gpu_idle(spec: Spec) -> dict[str, float]:
    """The GPU-utilisation time-slice SLOs, every slice bad: the engine does not serve, its GPUs idle."""
    return {slo.name: 1.0 for slo in spec.slos
            if slo.sli.timeslices is not None and slo.sli.timeslices.source.metric == GPU_UTILIZATION}


def _crash_loop(t: float) -> str:
    """Restarting every 60 s: 5 s before it listens, 35 s loading (not ready), 20 s serving."""
    if t < 0:
        return "serving"
    phase = t % 60
    return "down" if phase < 5 else "loading" if phase < 40 else "serving"


def scenarios(spec: Spec) -> list[Scenario]:
    # A crash loop's minute: 20 s serving 2 requests a second (40 good) and 40 s down or loading, in which
    # 4 probes go unanswered, each standing for 20 requests (80 lost): 2/3 of its events are missed.
    crash_miss = 80 / 120
    # A short incident: 10% of requests fail for 180 s (36 of them), then health again (a whole number of
    # scrapes: the pods count each scrape interval's requests at its midpoint).
    pulse_miss, pulse_s = 0.1, 180.0
    never = Release()
    return [
        Scenario("healthy service", "lab-healthy", HOURS, Story(), why="nothing fires; burn 0, budget 100% "
                 "from the first minute", release=never),
        Scenario("total outage (every request 5xx)", "lab-outage", HOURS, Story(failed=lambda t: float(t >= 0)),
                 _burns(spec, _every_slo(spec, 1.0), HOURS, engine_errors=1.0),
                 "outage page when >50% fail over 2m and 1m: 60 s"),
        Scenario("second service beside the outage", "lab-neighbour", HOURS, Story(),
                 why="nothing fires: its namespace is another service"),
        Scenario("100x burn (10% 5xx)", "lab-burn-100x", HOURS, Story(failed=lambda t: 0.1 * (t >= 0)),
                 _burns(spec, _every_slo(spec, 0.1), HOURS, engine_errors=0.1),
                 "14.4x over 1h: 1h x 14.4/100 = 518 s, + for 1m"),
        Scenario("20x burn (2% 5xx)", "lab-burn-20x", HOURS, Story(failed=lambda t: 0.02 * (t >= 0)),
                 _burns(spec, _every_slo(spec, 0.02), HOURS, engine_errors=0.02),
                 "14.4x over 1h: 1h x 14.4/20 = 2592 s, + for 1m"),
        Scenario("TTFT regression (25% slow first tokens)", "lab-ttft", HOURS,
                 Story(slow_ttft=lambda t: 0.25 * (t >= 0)),
                 _burns(spec, {"ttft": 0.25, "goodput": 0.25}, HOURS),
                 "the TTFT SLO pages (25x of 1%), availability stays silent"),
        Scenario("quiet night (30 requests/h, one 5xx)", "lab-quiet", HOURS,
                 Story(rate=constant(30 / 3600), single_failures=(3600.0,)),
                 why="nothing fires: 1 failure in fewer events than any guard"),
        Scenario("4xx storm (half the requests 400)", "lab-4xx", HOURS,
                 Story(client_errors=lambda t: 0.5 * (t >= 0)), why="nothing fires: client errors are not judged",
                 release=never),
        Scenario("client-disconnect storm (half 499)", "lab-499", HOURS,
                 Story(disconnects=lambda t: 0.5 * (t >= 0)), why="nothing fires: abandoned requests are not judged",
                 release=never),
        Scenario("budget spent and earned back (10% 5xx for 180 s)", "lab-freeze", HOURS,
                 Story(failed=lambda t: pulse_miss * (0 <= t < pulse_s)),
                 _burns(spec, _every_slo(spec, pulse_miss), HOURS, engine_errors=pulse_miss, duration_s=pulse_s),
                 "the failures pass 0.1% of the events so far 73 s in, spending availability's budget: releases "
                 "freeze; the error-rate and 1x tickets fire and resolve; clean traffic dilutes the 36 below 0.1% "
                 "at 10,800 s (36,000 events at 2/s since the replay began): releases lift",
                 release=_release(spec, _every_slo(spec, pulse_miss), HOURS, pulse_s)),
        # The restart as a counter reset between two scrapes: what it costs in downtime is what the
        # crash-loop and SIGKILL scenarios measure (and an orderly one, draining, costs nothing).
        Scenario("engine restart (counter reset) during a 0.5x burn", "lab-restart", HOURS,
                 Story(failed=constant(0.0005), restarts=(3600.0,)),
                 why="nothing fires: the counters' reset is no spike"),
        Scenario("engine killed, not restarted (the sidecar lives)", "lab-killed", HOURS,
                 Story(state=lambda t: "down" if t >= 0 else "serving"),
                 {**_burns(spec, {"availability": 1.0, **_gpu_idle(spec)}, HOURS), **_down(),
                  ("LLMSidecarCollectorFailing", "ticket"): 300.0},
                 "probes: the outage page at 60 s, the hour page, the budget burning for hours; "
                 "LLMServiceDown and LLMEngineDown after their 2m; idle GPUs: every minute bad, the GPU ticket "
                 "(1x: a quarter of the minutes since the replay began) after 50 min"),
        Scenario("whole pod gone (engine and sidecar)", "lab-pod-gone", HOURS,
                 Story(state=lambda t: "gone" if t >= 0 else "serving"),
                 {**_down(), **_burns(spec, _gpu_idle(spec), HOURS,
                                      duration_s=duration_seconds(NO_DATA_LOOKBACK) or 0)},
                 "no one is left to count: LLMServiceDown pages after its 2m, LLMEngineDown tickets; the GPU "
                 "reading, seen within the hour and gone, makes each minute of that hour bad: its ticket at 50 min"),
        Scenario("crash loop (restart every 60 s)", "lab-crashloop", HOURS, Story(state=_crash_loop),
                 _burns(spec, {"availability": crash_miss, **_gpu_idle(spec)}, HOURS),
                 "probes make 2/3 of its events missed: outage page ~90 s; LLMServiceDown's 2m never holds; the "
                 "GPUs busy 20 s a minute (0.3): every minute bad, the GPU ticket at 50 min"),
    ]
