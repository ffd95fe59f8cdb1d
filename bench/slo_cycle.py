"""What the sidecar's SLO maths costs: 10 SLOs with all their windows, per cycle, and memory over 30 days.

The baseline in the same run is one engine collect cycle on the captured vLLM
exposition (what the sidecar already does every second). Goals: the SLO work
for 10 SLOs under 1 ms per cycle, and memory flat over a simulated 30 days.

    .venv/bin/python bench/slo_cycle.py [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import gc
import sys
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.sidecar_cycle import FIXTURE, per_call_s  # noqa: E402
from slo_sidecar.sidecar.config import SidecarConfig  # noqa: E402
from slo_sidecar.sidecar.engine_poller import EnginePoller  # noqa: E402
from slo_sidecar.sidecar.exposition import Sample  # noqa: E402
from slo_sidecar.sidecar.slo_tracker import SloTracker  # noqa: E402
from slo_sidecar.spec.load import DEFAULT_SPEC, parse_spec  # noqa: E402


def ten_slos() -> str:
    """The default spec's SLOs, twice over with other objectives: 10 SLOs of every kind."""
    text = DEFAULT_SPEC.read_text().split("\n# The operational alerts")[0]
    head, slos = text.split("slos:\n", 1)
    again = slos.replace("- name: ", "- name: copy-").replace("objective: 99.9", "objective: 99.5")
    return head + "slos:\n" + slos + again


def scrape(minute: int) -> list[Sample]:
    """What the SLOs read from one scrape: HTTP counters and the engine's exact SLO counters."""
    ok, failed = 600.0 * minute, float(minute // 7)
    endpoint = ("endpoint", "/v1/completions")
    samples = [Sample("slo_engine_http_requests_total", (("code", "200"), endpoint), ok),
               Sample("slo_engine_http_requests_total", (("code", "500"), endpoint), failed)]
    for slo in ("ttft", "e2e-latency", "queue-time", "goodput"):
        for name in (slo, "copy-" + slo):
            samples += [Sample("slo_engine_slo_requests_total", (("good", "true"), ("slo", name)), ok * 0.97),
                        Sample("slo_engine_slo_requests_total", (("good", "false"), ("slo", name)), ok * 0.03)]
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    spec = parse_spec(ten_slos(), "ten-slos.yaml")
    assert len(spec.slos) == 10
    tracker = SloTracker(spec)
    for minute in range(3 * 1440):  # three days of history first: every tier holds data
        tracker.observe(scrape(minute), minute * 60.0)
    clock = [3 * 1440 * 60.0]
    samples = scrape(3 * 1440)

    def slo_cycle() -> None:
        clock[0] += 1.0
        tracker.observe(samples, clock[0])
        tracker.states(clock[0])

    text = FIXTURE.read_text()
    engine = EnginePoller(SidecarConfig(), monotonic=itertools.count(1).__next__)  # one scrape a second

    def engine_cycle() -> None:
        engine.take(text)

    min_time = 0.3 if args.quick else 3.0
    slo_s, engine_s = per_call_s(slo_cycle, min_time), per_call_s(engine_cycle, min_time)
    print(f"1. 10 SLOs x {len(spec.slos[0].windows())} windows, observe + states: {slo_s * 1e3:.3f} ms per cycle "
          f"(goal < 1 ms); an engine collect cycle: {engine_s * 1e3:.3f} ms -> {slo_s / engine_s:.2f}x of it")

    # Past the longest window (30 days, kept 31) nothing more is held: day 32 and day 40 must match.
    checkpoints = (2, 4, 6) if args.quick else (5, 32, 40)
    fresh = SloTracker(spec)
    gc.collect()
    tracemalloc.start()
    points = []
    for minute in range(checkpoints[-1] * 1440):
        fresh.observe(scrape(minute), minute * 60.0)
        if minute % 1440 == 1439 and minute // 1440 + 1 in checkpoints:
            gc.collect()
            rows = sum(len(t.ends) for s in fresh.slos for t in s.tiers)
            points.append((minute // 1440 + 1, tracemalloc.get_traced_memory()[0], rows))
    tracemalloc.stop()
    print("2. memory of the SLO state, a scrape a minute: " + ", ".join(
        f"day {day}: {size / 2**20:.2f} MiB ({rows} rows)" for day, size, rows in points)
        + f" -> last/middle {points[-1][1] / points[-2][1]:.3f}x (goal: flat once the 31 days are held)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
