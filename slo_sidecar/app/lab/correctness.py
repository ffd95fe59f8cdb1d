"""The lab's correctness scenarios, live: the real engine (with its admin listener), a golden baseline recorded
on it as `slo-sidecar validate --golden-out` records one, its sidecar probing against that baseline with
quarantine on, and Prometheus with the generated rules, on loopback, with users' traffic throughout.

What must happen, from the spec's numbers (`correctness`: a probe every 10 s, 2 bad in a row) and the lab's
scrape and evaluation interval (5 s), each time after the fault:
- the pod is unready at the second bad probe: the first probe after the fault comes within 10 s, the second
  10 s later, so within 20 s and a probe's own time (the issue's bound: 30 s);
- the fast page (`<Correctness>GoldenProbesBad`, no `for:`) at the scrape and evaluation after that: within
  30 s (the issue's bound: 60 s);
- no availability or latency alert: users' requests are still answered, on time (with NaN logits, with
  nothing: the silent failure);
- undone, the pod is ready at the next probe (within 10 s) and the page resolves a scrape and an evaluation
  later (within 20 s); both are allowed 10 s more for the probe's and the scrape's own time.
Then, healthy, the engine under a load whose batch sweeps from 1 to its limit: not one bad probe.
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import aiohttp

from slo_sidecar.spec.model import GOLDEN_PROBES, Spec
from slo_sidecar.sidecar.exposition import SampleFilter, parse

from ..golden_gate import GoldenGateError, record
from ..processes import EngineProcess, PrometheusProcess, SidecarProcess, http_get
from .live import send_traffic
from .run import Row

NAMESPACE = "lab-correctness"
SCRAPE_S = 5
MAX_NUM_SEQS = 4  # the engine's batch limit, which the healthy load sweeps up to
UNREADY_BOUND_S, PAGE_BOUND_S = 30.0, 60.0  # the issue's
READY_AGAIN_BOUND_S, RESOLVED_BOUND_S = 20.0, 30.0  # one probe (10 s); + a scrape and an evaluation (10 s); + 10 s
FAULTS = {  # as the admin listener takes them (docs/correctness.md): each undone with {}
    "weights corrupted (final norm x1.1)": {"scale": {"parameter": "model.norm.weight", "factor": 1.1}},
    "NaN logits": {"nan_logits": True},
}
COLLECTOR_ERRORS = "sidecar_collector_errors_total"
RECORDED_RATIO = "slo:sli_error:ratio_rate5m"
GOLDEN_FAMILIES = SampleFilter([GOLDEN_PROBES.removesuffix("_total"), COLLECTOR_ERRORS.removesuffix("_total")])


@dataclass
class Timeline:
    """Seconds after the fault (unready, paged) and after the undo (ready, resolved); None: not seen."""

    unready: float | None = None
    paged: float | None = None
    ready: float | None = None
    resolved: float | None = None


def correctness_scenarios(spec: Spec, rules_dir: Path, workdir: Path, healthy_s: float,
                          start_after: threading.Event | None = None,
                          sweep_after: threading.Event | None = None) -> list[Row]:
    """One row per fault, and one for the healthy engine under a sweeping batch (when healthy_s > 0). The engine
    starts after `start_after` and the sweep after `sweep_after`: an engine's start and a batch that saturates
    the machine would starve other live scenarios' processes when their timing counts."""
    workdir.mkdir(parents=True, exist_ok=True)
    if start_after is not None:
        start_after.wait()
    correctness = next((slo for slo in spec.slos if slo.sli.kind == "correctness"), None)
    if correctness is None:
        return []
    page_alert = correctness.alert_name + "GoldenProbesBad"
    with ExitStack() as stack:
        engine = stack.enter_context(EngineProcess(workdir / "engine.log", "--max-num-seqs", str(MAX_NUM_SEQS),
                                                   fault_injection=True).start())
        engine.wait_ready()
        baseline = workdir / "golden-baseline.json"
        _record(engine.url, spec, baseline)
        sidecar = stack.enter_context(SidecarProcess(workdir / "sidecar.log", engine.url, "--engine-interval-s", "1",
                                                     "--golden-baseline", str(baseline)).start())
        sidecar.wait_ready()
        targets = {"engine": engine.url.removeprefix("http://"), "sidecar": sidecar.url.removeprefix("http://")}
        prometheus = stack.enter_context(PrometheusProcess(
            workdir, targets, sorted(rules_dir.glob("*.rules.yaml")), scrape_interval=f"{SCRAPE_S}s",
            evaluation_interval=f"{SCRAPE_S}s", target_labels={"namespace": NAMESPACE}).start())
        prometheus.wait_ready()
        stop = threading.Event()
        stack.callback(stop.set)
        threading.Thread(target=send_traffic, args=(engine.url, stop), daemon=True).start()
        # The first good probe (the engine is known good), scraped by Prometheus, whose rules have run over it.
        _wait(lambda: golden_counts(sidecar.url)[0] >= 1 and bool(prometheus.query(
            f'{RECORDED_RATIO}{{sloth_slo="{correctness.name}",namespace="{NAMESPACE}"}}')), 90)
        rows = []
        for name, fault in FAULTS.items():
            timeline, strays = _fault(engine, sidecar, prometheus, fault, page_alert)
            rows.append(_fault_row(name, timeline, strays, page_alert))
        if healthy_s > 0:
            stop.set()  # the sweep is the only load now
            if sweep_after is not None:
                sweep_after.wait()
            rows.append(_healthy(engine.url, sidecar.url, healthy_s))
    return rows


def _record(url: str, spec: Spec, baseline: Path, tries: int = 3) -> None:
    """The baseline, as `validate --golden-out` records it. Tried again after a failure: once, in a fresh clone's
    suite with every core busy, one of its requests went unanswered for 30 s while vLLM ran nothing."""
    for attempt in range(1, tries + 1):
        try:
            return record(url, spec, baseline, api_key=None)
        except GoldenGateError as error:
            if attempt == tries:
                raise
            print(f"lab: recording the golden baseline failed ({error}); trying again", flush=True)


def _fault(engine: EngineProcess, sidecar: SidecarProcess, prometheus: PrometheusProcess, fault: dict[str, Any],
           page_alert: str) -> tuple[Timeline, list[str]]:
    """Inject, watch until unready and paged (or 90 s), undo, watch until ready and resolved (or 60 s)."""
    strays: set[str] = set()

    def watch(limit_s: float, wanted: dict[str, Callable[[int, bool], bool]]) -> dict[str, float | None]:
        """Seconds until each condition on (/ready's status, paged) first held; None: not within limit_s."""
        began, first = time.monotonic(), dict.fromkeys(wanted)
        while time.monotonic() - began < limit_s and None in first.values():
            seen = _look(sidecar, prometheus, strays, page_alert)
            for name, holds in wanted.items():
                if seen is not None and first[name] is None and holds(*seen):
                    first[name] = time.monotonic() - began
            time.sleep(0.5)
        return first

    engine.set_model_faults(fault)
    broken = watch(90, {"unready": lambda ready, paged: ready == 503, "paged": lambda ready, paged: paged})
    engine.set_model_faults({})
    healed = watch(60, {"ready": lambda ready, paged: ready == 200, "resolved": lambda ready, paged: not paged})
    return Timeline(broken["unready"], broken["paged"], healed["ready"], healed["resolved"]), sorted(strays)


def _look(sidecar: SidecarProcess, prometheus: PrometheusProcess, strays: set[str], page_alert: str
          ) -> tuple[int, bool] | None:
    """(the sidecar's /ready status, whether the fast page fires), or None when either did not answer in time:
    on a busy 2-core machine Prometheus's API has taken over 5 s once; the next look, half a second on, counts."""
    try:
        return http_get(sidecar.url + "/ready")[0], _firing(prometheus, strays, page_alert)
    except OSError:
        return None


def _firing(prometheus: PrometheusProcess, strays: set[str], page_alert: str) -> bool:
    """Whether the fast page fires now; any firing availability or latency alert goes into strays."""
    paged = False
    for alert in prometheus.alerts():
        labels = alert["labels"]
        if alert["state"] != "firing" or labels.get("namespace") != NAMESPACE:
            continue
        if labels["alertname"] == page_alert:
            paged = True
        elif labels.get("sloth_slo") != "correctness":  # its burn alerts may follow the bad probes: they are true
            strays.add(f"{labels['alertname']} ({labels.get('tier', '')})")
    return paged


def _fault_row(name: str, timeline: Timeline, strays: list[str], page_alert: str) -> Row:
    row = Row(f"{name} (live processes)", "page 30 s, unready 20 s", PAGE_BOUND_S, None, timeline.paged, None,
              page_alert=page_alert if timeline.paged is not None else "",
              why="2 bad golden probes in a row (10 s apart): unready, then the fast page at the next scrape and "
                  "evaluation; undone: ready at the next good probe, the page resolved")
    row.false_fires = [f"{stray}: users' requests were answered on time" for stray in strays]
    for what, seen, bound in (("unready", timeline.unready, UNREADY_BOUND_S), ("paged", timeline.paged, PAGE_BOUND_S),
                              ("ready again after the undo", timeline.ready, READY_AGAIN_BOUND_S),
                              ("page resolved after the undo", timeline.resolved, RESOLVED_BOUND_S)):
        if seen is None or seen > bound:
            row.missing.append(f"{what} within {bound:.0f} s" + (f" (at {seen:.0f} s)" if seen is not None else ""))
    row.measured = ", ".join(f"{what} {'-' if seen is None else f'{seen:.0f} s'}" for what, seen in (
        ("unready", timeline.unready), ("paged", timeline.paged), ("after the undo: ready", timeline.ready),
        ("resolved", timeline.resolved)))
    return row


def _healthy(engine_url: str, sidecar_url: str, seconds: float) -> Row:
    """The healthy engine under a load sweeping its batch from 1 to MAX_NUM_SEQS: every probe good."""
    before = golden_counts(sidecar_url)
    asyncio.run(_sweep(engine_url, seconds))
    good, bad, failed = (after - earlier for after, earlier in zip(golden_counts(sidecar_url), before))
    row = Row(f"healthy engine, batch 1 to {MAX_NUM_SEQS}, {seconds / 60:g} min (live processes)", "no bad probe",
              None, None, None, None, why="batch-to-batch numeric noise stays inside the tolerance")
    # A probe every 10 s, the next one 10 s after the last one's answer, which waits its turn in a full batch
    # (about 0.7 s here): at least 90% of seconds / 10, so that the probes covered the whole sweep.
    wanted = int(0.9 * seconds / 10)
    if bad:
        row.false_fires.append(f"{bad:.0f} bad golden probes of {good + bad:.0f}")
    if failed:
        row.false_fires.append(f"{failed:.0f} golden probes unanswered or unscorable")
    if good < wanted:
        row.missing.append(f"at least {wanted} good golden probes (got {good:.0f})")
    row.measured = f"{good:.0f} good, {bad:.0f} bad and {failed:.0f} failed golden probes"
    return row


async def _sweep(url: str, seconds: float) -> None:
    """Streams in steps of 1, 2, ... MAX_NUM_SEQS at once, then down again, each step 5 s, until seconds pass."""
    body = {"prompt": "the batch", "max_tokens": 64, "ignore_eos": True}
    deadline = time.monotonic() + seconds
    levels = [*range(1, MAX_NUM_SEQS + 1), *range(MAX_NUM_SEQS - 1, 1, -1)]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def client(until: float) -> None:
            while time.monotonic() < until:
                async with session.post(url + "/v1/completions", json=body) as response:
                    await response.read()

        step = 0
        while time.monotonic() < deadline:
            until = min(deadline, time.monotonic() + 5)
            await asyncio.gather(*(client(until) for _ in range(levels[step % len(levels)])))
            step += 1


def golden_counts(sidecar_url: str) -> tuple[float, float, float]:
    """(good, bad, failed) golden probes the sidecar has counted; failed: unanswered or unscorable. Waits up to
    30 s for the answer: once, with the replays beside the sweep on 2 cores, 5 s were not enough."""
    status, body = http_get(sidecar_url + "/metrics", timeout=30)
    if status != 200:
        return 0.0, 0.0, 0.0
    samples = parse(body.decode(), GOLDEN_FAMILIES)
    counts = {s.label("result"): s.value for s in samples if s.name == GOLDEN_PROBES}
    failed = sum(s.value for s in samples if s.name == COLLECTOR_ERRORS and s.label("collector") == "golden")
    return counts.get("good", 0.0), counts.get("bad", 0.0), failed


def _wait(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not _holds(condition):
        if time.monotonic() > deadline:
            raise TimeoutError("no good golden probe recorded by Prometheus's rules")
        time.sleep(0.5)


def _holds(condition: Callable[[], bool]) -> bool:
    try:
        return condition()
    except OSError:  # a process that did not answer in time: not yet
        return False
