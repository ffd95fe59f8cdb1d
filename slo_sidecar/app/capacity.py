"""`slo-sidecar capacity`: the highest request rate one pod carries within every SLO of its spec.

Open-loop load (Poisson arrivals, as vLLM's benchmark sends them) at stepped
rates; each step is judged against every SLO of the spec, from the engine's
exact counters where it has them, else from the client's view (as `validate`
judges); the SLO capacity is the highest rate at which every objective, the
goodput one included, still holds (DistServe's definition of goodput). Rates
double from --min-rate until a step fails, then bisection narrows the gap to
--precision. I/O here; the search and the verdicts are pure functions below.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from slo_sidecar.iokit.arguments import http_url, positive
from slo_sidecar.iokit.files import write_atomically
from slo_sidecar.sidecar.headroom import MEASURE_KEYS, QUANTILE, capped_p90
from slo_sidecar.spec.capacity_report import CapacityReport, SloAttainment, Step, to_json
from slo_sidecar.spec.model import Spec


EXIT_FAIL, EXIT_ERROR = 1, 2


def events_needed(objective: float) -> int:
    """The fewest events in which one failure is within the budget: ceil(1 / (1 - objective))."""
    return math.ceil(1 / (1 - objective / 100) - 1e-9)


def step_duration(spec: Spec, rate_rps: float, step_s: float, max_step_s: float) -> float:
    """Long enough for every objective to be judged (its needed events at this rate), within max_step_s."""
    longest = max(events_needed(slo.objective) for slo in spec.slos) / rate_rps
    return min(max(step_s, longest), max(step_s, max_step_s))


def step_verdict(slos: dict[str, SloAttainment]) -> bool | None:
    judged = [slo.passed for slo in slos.values() if slo.passed is not None]
    return None if not judged else all(judged)


def step_headroom(spec: Spec, quantiles: dict[tuple[str, float], float], means: dict[str, float]) -> float | None:
    """The sidecar's headroom over the step (sidecar/headroom.py, unsmoothed): the worst p90 / target of the
    spec's exact targets, 1.0 at the target; None when no measure with a target was observed."""
    from slo_sidecar.sidecar.headroom import exact_targets, raw_headroom

    values = [value for targets in exact_targets(spec).values()
              if (value := raw_headroom(targets, quantiles, means)) is not None]
    return max(values) if values else None


# --- the search ---------------------------------------------------------------------------------

@dataclass
class Search:
    """Doubling from min_rate until a step fails (or max_rate), then bisection until the gap between the
    highest passing and the lowest failing rate is within `precision` of the former."""

    min_rate: float
    max_rate: float
    precision: float = 0.1
    steps: list[Step] = field(default_factory=list)

    @property
    def highest_pass(self) -> float | None:
        return max((s.rate_rps for s in self.steps if s.passed), default=None)

    @property
    def lowest_fail(self) -> float | None:
        """The lowest rate that failed, or could not be judged (it is not shown to hold)."""
        return min((s.rate_rps for s in self.steps if not s.passed), default=None)

    def next_rate(self) -> float | None:
        """The next rate to try; None when the search is over."""
        if not self.steps:
            return self.min_rate
        low, high = self.highest_pass, self.lowest_fail
        if low is None:
            return None  # the lowest rate already misses
        if high is None:
            return None if low >= self.max_rate else min(low * 2, self.max_rate)
        if high - low <= self.precision * low:
            return None
        return (low + high) / 2

    @property
    def capacity(self) -> float | None:
        low, high = self.highest_pass, self.lowest_fail
        return low if low is not None and (high is None or low < high) else None


# --- one step, against a real engine -------------------------------------------------------------

def judge_step(spec: Spec, rate: float, run, duration_s: float) -> Step:
    """A finished load's verdict per SLO: the engine's exact counters where it has events, else the client's
    view; p90s from vLLM's histograms over the step."""
    from .gate import judge, samples_by_name, server_events

    scrapes = (samples_by_name(run.metrics_before), samples_by_name(run.metrics_after)) \
        if run.metrics_before and run.metrics_after else None
    _, criteria = judge(spec, run.results, run.wall_s, run.metrics_before, run.metrics_after)
    slos = {}
    for slo in spec.slos:
        needed = events_needed(slo.objective)
        bad, total = server_events(slo, *scrapes) if scrapes and slo.sli.sidecar_can_evaluate else (0.0, 0.0)
        if total > 0:
            attained = (total - bad) / total
            passed = None if total < needed else attained >= slo.objective_ratio
            slos[slo.key] = SloAttainment(slo.objective, attained, int(total), needed, passed, "server")
            continue
        client = [c for c in criteria if c.slo == slo.key and c.view == "client" and c.passed is not None]
        passed = all(c.passed for c in client) if client and len(run.results) >= needed else None
        slos[slo.key] = SloAttainment(slo.objective, None, len(run.results), needed, passed, "client")
    quantiles, means = step_histograms(run.metrics_before, run.metrics_after, duration_s) if scrapes else ({}, {})
    p90s = {measure: _finite(capped_p90(quantiles.get((key, QUANTILE), math.nan), means.get(key)))
            for measure, key in MEASURE_KEYS.items()}
    answered = sum(1 for r in run.results if r.status)
    queue_time = means.get(MEASURE_KEYS["queue"])
    return Step(rate, duration_s, len(run.results), answered / duration_s, slos, p90s,
                step_headroom(spec, quantiles, means), step_verdict(slos),
                None if queue_time is None else rate * queue_time)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def step_histograms(before: str, after: str, duration_s: float = 1.0
                    ) -> tuple[dict[tuple[str, float], float], dict[str, float]]:
    """vLLM's latency histograms over the step, from the engine's /metrics before and after it, read as the
    sidecar reads a scrape (one engine snapshot, resets handled): the p90 of each ((key, 0.9) -> s, NaN
    with nothing observed) and its mean."""
    from slo_sidecar.sidecar.engine_snapshot import FAMILIES, SnapshotBuilder
    from slo_sidecar.sidecar.exposition import parse

    builder = SnapshotBuilder(window_s=duration_s)
    builder.build(parse(before, FAMILIES), 0.0, 0.0)
    snapshot = builder.build(parse(after, FAMILIES), duration_s, duration_s)
    quantiles = {(key, QUANTILE): snapshot.quantiles.get((key, QUANTILE), math.nan) for key in MEASURE_KEYS.values()}
    return quantiles, {key: snapshot.means[key] for key in MEASURE_KEYS.values() if key in snapshot.means}


def run_step(settings, spec: Spec, rate: float, duration_s: float) -> Step:
    from .loadgen import run_load

    run = asyncio.run(run_load(replace(settings, rate_rps=rate, duration_s=duration_s), show_progress=False))
    return judge_step(spec, rate, run, duration_s)


def search(settings, spec: Spec, args: argparse.Namespace, show: Callable[[str], None]) -> Search:
    """The search, then a confirmation: the capacity found is loaded again, twice as long and with other
    arrival times; if it misses, that rate fails and the search goes on below it. Near its capacity a
    queue takes long to reach its steady length, and one short step may pass by luck."""
    found = Search(args.min_rate, args.max_rate, args.precision)
    while True:
        while (rate := found.next_rate()) is not None:
            found.steps.append(_timed_step(settings, spec, args, rate, 1.0, show))
        capacity = found.capacity
        if capacity is None or any(step.confirms for step in found.steps if step.rate_rps == capacity):
            return found
        confirmation = replace(_timed_step(replace(settings, seed=settings.seed + 1), spec, args, capacity, 2.0,
                                           show, "confirming "), confirms=True)
        found.steps.append(confirmation)
        if confirmation.passed:
            return found
        found.steps = [replace(step, passed=False) if step.rate_rps == capacity else step for step in found.steps]


def _timed_step(settings, spec: Spec, args: argparse.Namespace, rate: float, longer: float,
                show: Callable[[str], None], what: str = "") -> Step:
    duration = step_duration(spec, rate, args.step_s, args.max_step_s) * longer
    show(f"capacity: {what}{rate:.3g} req/s for {duration:.0f} s ...")
    step = run_step(settings, spec, rate, duration)
    show("  " + step_line(step))
    return step


# --- output ---------------------------------------------------------------------------------------

def step_line(step: Step) -> str:
    verdict = {True: "PASS", False: "FAIL", None: "n/a"}[step.passed]
    worst = min(((name, slo) for name, slo in step.slos.items() if slo.attainment is not None),
                key=lambda item: item[1].attainment - item[1].objective / 100, default=None)
    detail = f"; tightest {worst[0]} {worst[1].attainment:.2%} (>= {worst[1].objective:g}%)" if worst else ""
    unjudged = f"; not judged (too few events): {', '.join(step.unjudged)}" if step.unjudged else ""
    room = "" if step.headroom is None else f", headroom {step.headroom:.2f}"
    return f"{step.rate_rps:.3g} req/s: {step.sent} sent{room}{detail}{unjudged}: {verdict}"


def table(found: Search) -> str:
    names = sorted({name for step in found.steps for name in step.slos})
    head = f"{'req/s':>7} {'sent':>6} {'headroom':>8} " + " ".join(f"{name[:14]:>14}" for name in names) + "  result"
    lines = [head]
    for step in sorted(found.steps, key=lambda s: s.rate_rps):
        cells = []
        for name in names:
            slo = step.slos.get(name)
            text = "-" if slo is None or slo.attainment is None else f"{slo.attainment:.2%}"
            cells.append(f"{text + ('' if slo is None or slo.passed is not None else '?'):>14}")
        room = "-" if step.headroom is None else f"{step.headroom:.2f}"
        lines.append(f"{step.rate_rps:>7.3g} {step.sent:>6} {room:>8} " + " ".join(cells) + "  "
                     + {True: "PASS", False: "FAIL", None: "n/a"}[step.passed]
                     + (" (confirmation, 2x as long)" if step.confirms else ""))
    capacity = found.capacity
    lines.append(f"SLO capacity: {capacity:.3g} req/s" if capacity is not None else
                 "SLO capacity: none (the lowest rate misses an objective)")
    return "\n".join(lines)


def report(found: Search, settings, spec: Spec) -> CapacityReport:
    load = {"arrivals": "poisson", "prompt_tokens": settings.prompt_tokens, "max_tokens": settings.max_tokens,
            "stream": settings.stream, "seed": settings.seed, "request_mix": len(settings.request_mix)}
    return CapacityReport(settings.url, spec.source, load, tuple(sorted(found.steps, key=lambda s: s.rate_rps)),
                          found.capacity)


def run(args: argparse.Namespace, spec: Spec) -> int:
    from .capacity_chart import write_chart
    from .loadgen import LoadSettings, RequestFileError, read_request_file

    try:
        mix = read_request_file(args.requests_file) if args.requests_file else ()
    except RequestFileError as error:
        print(f"slo-sidecar capacity: error: --requests-file {error}", file=sys.stderr)
        return EXIT_ERROR
    settings = LoadSettings(url=args.url.rstrip("/"), prompt_tokens=args.prompt_tokens, max_tokens=args.max_tokens,
                            stream=True, api_key=args.api_key or os.environ.get("SLO_ENGINE_API_KEY"),
                            seed=args.seed, timeout_s=args.timeout_s, request_mix=mix)
    if args.min_rate > args.max_rate:
        print(f"slo-sidecar capacity: error: --min-rate {args.min_rate:g} is above --max-rate {args.max_rate:g}",
              file=sys.stderr)
        return EXIT_ERROR
    show = (lambda text: print(text, file=sys.stderr, flush=True))
    try:
        found = search(settings, spec, args, show)
    except (OSError, RuntimeError) as error:
        print(f"slo-sidecar capacity: error: cannot load {settings.url}: {error}", file=sys.stderr)
        return EXIT_ERROR
    print(table(found))
    data = report(found, settings, spec)
    if args.json:
        write_atomically(Path(args.json), to_json(data))
        show(f"report: {args.json}")
    if args.chart:
        write_chart(data, Path(args.chart))
        show(f"chart: {args.chart}")
    return 0 if found.capacity is not None else EXIT_FAIL


def chart_path(text: str) -> str:
    if Path(text).suffix.lower() not in (".svg", ".png"):
        raise argparse.ArgumentTypeError(f"expected a file name ending in .svg or .png, got {text!r}")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", type=http_url, required=True, help="the engine's base URL, e.g. http://localhost:8000")
    parser.add_argument("--slo", help="the SLO spec (default: the embedded slo.yaml)")
    parser.add_argument("--json", help="write the report here (steps, attainment per SLO, capacity)")
    parser.add_argument("--chart", type=chart_path, help="draw attainment against offered rate here: FILE.svg or FILE.png")
    parser.add_argument("--step-s", type=positive(float), default=60.0,
                        help="seconds per step at the least (longer where an objective needs more events; default 60)")
    parser.add_argument("--max-step-s", type=positive(float), default=600.0,
                        help="seconds per step at the most: an objective that needs more events than fit is "
                             "reported as not judged (default 600)")
    parser.add_argument("--min-rate", type=positive(float), default=0.5, help="the first rate, req/s (default 0.5)")
    parser.add_argument("--max-rate", type=positive(float), default=64.0, help="the highest rate tried (default 64)")
    parser.add_argument("--precision", type=positive(float), default=0.1,
                        help="stop when the gap between passing and failing rates is this share (default 0.1)")
    parser.add_argument("--prompt-tokens", type=positive(int), default=64, help="prompt words, ~tokens (default 64)")
    parser.add_argument("--max-tokens", type=positive(int), default=32, help="tokens per answer (default 32)")
    parser.add_argument("--requests-file", help="JSON lines, one request each ({\"prompt\": ..., \"max_tokens\": N} or "
                        "{\"prompt_tokens\": N, \"max_tokens\": N}), sent in turn instead of --prompt-tokens and "
                        "--max-tokens: your traffic's mix of lengths")
    parser.add_argument("--seed", type=int, default=1, help="of the arrival times (default 1)")
    parser.add_argument("--timeout-s", type=positive(float), default=120.0, help="per request (default 120)")
    parser.add_argument("--api-key", help="bearer token (default: $SLO_ENGINE_API_KEY)")
