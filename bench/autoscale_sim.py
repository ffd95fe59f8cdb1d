"""Autoscaling on SLO headroom, simulated: a traffic ramp through the Kubernetes HPA against a measured capacity curve.

The curve is a capacity report (`slo-sidecar capacity --json FILE`); the policies are HPA on headroom, on
queue depth, a static fleet and the ideal bound. Nothing runs but arithmetic. The model step by step, the
interpolation, how good requests are combined and how targets are chosen: docs/capacity.md, "The
autoscaling simulation, in detail".

    .venv/bin/python bench/autoscale_sim.py [--report FILE] [--ramp 0:2,20:10,40:10,60:1] [--extra]
        [--headroom-target auto|X] [--queue-target auto|X] [--startup-s 60] [--behavior default|deploy]
        [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from slo_sidecar.sidecar.headroom import DEFAULT_TIME_CONSTANT_S as HEADROOM_TAU_S  # noqa: E402
from slo_sidecar.sidecar.headroom import clamp as headroom_clamp  # noqa: E402
from slo_sidecar.sidecar.headroom import ewma as headroom_ewma  # noqa: E402
from slo_sidecar.spec.capacity_report import CapacityReport, from_json  # noqa: E402
from slo_sidecar.spec.capacity_report import Step as ReportStep  # noqa: E402
from bench.hpa_model import (  # noqa: E402
    DEFAULT_SCALE_DOWN, DEFAULT_SCALE_UP, SYNC_PERIOD_S, Fleet, HorizontalPodAutoscaler, HpaSpec, ScalingPolicy,
    ScalingRules, metric_proposal)

FIXTURE = REPO / "tests" / "fixtures" / "capacity-report.json"
DEPLOY_HPA = REPO / "deploy" / "base" / "hpa.yaml"
DEFAULT_RAMP = "0:2,20:10,40:10,60:1"
# Context, not reproduced here: llm-d's SLO-aware KEDA scaling (H100, Qwen3-32B), as issue 17 cites it.
REFERENCE = ("llm-d, SLO-aware KEDA scaling (H100, Qwen3-32B; published, not reproduced here): "
             "95.8% attainment on 5.93 average replicas, against 100% on 8 static")


class ReportError(ValueError):
    """The capacity report cannot be used: a one-line reason."""


Series = list[tuple[float, float]]  # (offered rate, value), sorted by rate


@dataclass(frozen=True)
class Outcome:
    """What the curve says about one pod at one load."""

    attainment: dict[str, float]
    headroom: float
    queue_depth: float
    extrapolated: bool  # beyond the report's highest rate


@dataclass
class Curve:
    """Latency-vs-load of one pod, from a capacity report; see the module's docstring for the rules.

    Each quantity is its own series over the steps that report it: a step may leave an SLO's attainment out
    (None: judged from the client's view only), or its headroom (no measure observed).
    """

    attainment: dict[str, Series]
    objectives: dict[str, float]  # per SLO, a fraction
    headroom: Series
    queue_depth: Series
    capacity_rps: float
    highest_rate: float
    throughput_ceiling: float = math.inf  # the most requests per second a step finished (achieved_rps)
    queue_estimated: bool = False  # no queue_depth_mean in the report: rate x p90 queue time (Little's law)
    left_out: tuple[str, ...] = ()  # SLOs with no attainment at any step

    @classmethod
    def from_report(cls, report: CapacityReport) -> Curve:
        """From a report as capacity_report.from_json read it (its fields checked there)."""
        if report.capacity_rps is None:
            raise ReportError("the report found no capacity (its lowest rate already missed an objective)")
        capacity = report.capacity_rps
        # One step per rate: where a rate was loaded twice (the capacity's confirmation, twice as long),
        # the longer run stands.
        longest: dict[float, ReportStep] = {}
        for step in report.steps:
            if step.rate_rps not in longest or step.duration_s > longest[step.rate_rps].duration_s:
                longest[step.rate_rps] = step
        steps = [longest[rate] for rate in sorted(longest)]
        rates = [step.rate_rps for step in steps]
        attainment: dict[str, Series] = {}
        objectives: dict[str, float] = {}
        headroom: Series = []
        depth: Series = []
        estimated: Series = []
        achieved = [step.achieved_rps for step in steps]
        for rate, step in zip(rates, steps):
            for name, slo in step.slos.items():
                objectives.setdefault(name, slo.objective / 100.0)
                if slo.attainment is not None:
                    attainment.setdefault(name, []).append((rate, slo.attainment))
            if step.headroom is not None:
                headroom.append((rate, step.headroom))
            if step.queue_depth_mean is not None:
                depth.append((rate, step.queue_depth_mean))
            queue_p90 = step.latency.get("queue", step.latency.get("queue_p90_s"))  # the writer's key, or the draft's
            if queue_p90 is not None:
                estimated.append((rate, rate * queue_p90))
        if not steps:
            raise ReportError("the capacity report has no steps")
        if not attainment:
            raise ReportError("no step reports an SLO's attainment")
        if not headroom:
            raise ReportError("no step reports a headroom")
        left_out = tuple(sorted(set(objectives) - set(attainment)))
        return cls(attainment, {n: objectives[n] for n in attainment}, headroom, depth or estimated, capacity,
                   rates[-1], max(achieved, default=math.inf), queue_estimated=not depth and bool(estimated),
                   left_out=left_out)

    def at(self, rate: float) -> Outcome:
        return Outcome({name: _falling(series, rate) for name, series in self.attainment.items()},
                       _growing(self.headroom, rate), _growing(self.queue_depth, rate) if self.queue_depth else 0.0,
                       rate > self.highest_rate)

    def holds(self, rate: float) -> bool:
        """Whether every objective holds at this per-pod load."""
        attainment = self.at(rate).attainment
        return all(attainment[n] >= self.objectives[n] - 1e-12 for n in self.objectives)

    def holding_limit(self) -> float:
        """The highest per-pod load up to which every objective holds (the curve's own capacity)."""
        rates = sorted({r for series in self.attainment.values() for r, _ in series})
        if not self.holds(rates[0]):
            return 0.0
        low = rates[0]
        for rate in rates[1:] + [2 * rates[-1]]:
            if not self.holds(rate):
                high = rate
                for _ in range(60):  # bisect the segment: the crossing of the first SLO to fail
                    mid = (low + high) / 2
                    low, high = (mid, high) if self.holds(mid) else (low, mid)
                return low
            low = rate
        return low

    def metric(self, name: str, rate: float) -> float:
        """The metric a pod at this load shows: 0 when idle (the sidecar's rule for headroom)."""
        if rate <= 0:
            return 0.0
        outcome = self.at(rate)
        return outcome.headroom if name == "headroom" else outcome.queue_depth


def _line(series: Series, rate: float) -> float:
    """The last segment continued (flat for a single point)."""
    rate_n, value_n = series[-1]
    if len(series) == 1:
        return value_n
    rate_m, value_m = series[-2]
    return value_n + (value_n - value_m) / (rate_n - rate_m) * (rate - rate_n)


def _inside(series: Series, rate: float) -> float | None:
    """Linear between points, the first point's value below it; None beyond the last point."""
    if rate <= series[0][0]:
        return series[0][1]
    for (r0, v0), (r1, v1) in zip(series, series[1:]):
        if rate <= r1:
            return _lerp(v0, v1, (rate - r0) / (r1 - r0))
    return None


def _falling(series: Series, rate: float) -> float:
    """An attainment: beyond the last point the worse of the line and as many good requests/s as there."""
    value = _inside(series, rate)
    if value is not None:
        return value
    rate_n, value_n = series[-1]
    return max(0.0, min(_line(series, rate), value_n * rate_n / rate))


def _growing(series: Series, rate: float) -> float:
    """Headroom or queue depth: beyond the last point the larger of the line and growth with the load."""
    value = _inside(series, rate)
    if value is not None:
        return value
    rate_n, value_n = series[-1]
    return max(_line(series, rate), value_n * rate / rate_n)


def _lerp(a: float, b: float, w: float) -> float:
    return a + (b - a) * w


@dataclass(frozen=True)
class Ramp:
    """Total offered rate over time, in units of capacity_rps: (minute, factor) points, linear between them."""

    points: tuple[tuple[float, float], ...]

    @classmethod
    def parse(cls, text: str) -> Ramp:
        try:
            points = tuple((float(m), float(f)) for m, f in (item.split(":") for item in text.split(",")))
        except ValueError:
            raise ValueError(f"ramp {text!r}: expected minute:factor pairs, e.g. {DEFAULT_RAMP}") from None
        minutes = [m for m, _ in points]
        if len(points) < 2 or minutes[0] != 0 or minutes != sorted(set(minutes)) or any(f < 0 for _, f in points):
            raise ValueError(f"ramp {text!r}: minutes must start at 0 and rise, factors be >= 0")
        return cls(points)

    @property
    def duration_s(self) -> float:
        return self.points[-1][0] * 60.0

    @property
    def peak(self) -> float:
        return max(f for _, f in self.points)

    def factor(self, t_s: float) -> float:
        minute = t_s / 60.0
        if minute <= self.points[0][0]:
            return self.points[0][1]
        for (m0, f0), (m1, f1) in zip(self.points, self.points[1:]):
            if minute <= m1:
                return _lerp(f0, f1, (minute - m0) / (m1 - m0))
        return self.points[-1][1]


@dataclass(frozen=True)
class Policy:
    """`targets`: an HPA on these (metric, target) pairs, the largest proposal winning; none: `replicas`
    static pods, or with `ideal` exactly ceil(rate / capacity) pods at every step, ready at once (no policy
    can do that: the cost floor)."""

    name: str
    targets: tuple[tuple[str, float], ...] = ()
    replicas: int = 0
    ideal: bool = False


@dataclass(frozen=True)
class SimSettings:
    step_s: float = SYNC_PERIOD_S
    startup_s: float = 60.0
    metric_window_s: float = 60.0
    headroom_tau_s: float = HEADROOM_TAU_S
    warmup_s: float = 600.0
    min_replicas: int = 1
    max_replicas: int = 20
    combine: str = "worst"
    scale_up: ScalingRules = DEFAULT_SCALE_UP
    scale_down: ScalingRules = DEFAULT_SCALE_DOWN


def deploy_behavior(path: Path = DEPLOY_HPA) -> tuple[ScalingRules, ScalingRules]:
    """The scale-up and scale-down rules of the shipped HorizontalPodAutoscaler (its behavior: section)."""
    behavior = yaml.safe_load(path.read_text())["spec"].get("behavior") or {}

    def rules(direction: str, default: ScalingRules) -> ScalingRules:
        given = behavior.get(direction) or {}
        policies = tuple(ScalingPolicy(p["type"], int(p["value"]), float(p["periodSeconds"]))
                         for p in given.get("policies", ())) or default.policies
        return ScalingRules(float(given.get("stabilizationWindowSeconds", default.stabilization_window_s)),
                            policies, given.get("selectPolicy", "Max"))

    return rules("scaleUp", DEFAULT_SCALE_UP), rules("scaleDown", DEFAULT_SCALE_DOWN)


@dataclass
class MetricFeed:
    """What the HPA reads of one metric per ready pod: the mean of the per-step values over the window (the
    rate window of a p90, or the adapter's avg_over_time), for headroom then clamped and smoothed as the
    sidecar does (sidecar/headroom.py: clamp to 0-4, EWMA with time constant tau)."""

    metric: str
    window: deque[float]
    tau_s: float = 0.0
    value: float | None = None

    @classmethod
    def of(cls, metric: str, settings: SimSettings) -> MetricFeed:
        steps = max(1, round(settings.metric_window_s / settings.step_s))
        return cls(metric, deque(maxlen=steps), settings.headroom_tau_s if metric == "headroom" else 0.0)

    def observe(self, sample: float, dt_s: float) -> None:
        self.window.append(sample)
        mean = sum(self.window) / len(self.window)
        if self.metric == "headroom":
            mean = headroom_clamp(mean)
            if self.tau_s > 0:
                self.value = headroom_ewma(self.value, mean, dt_s, self.tau_s)
                return
        self.value = mean


@dataclass
class Step:
    t_s: float
    rate_rps: float
    replicas: int
    ready: int
    load_rps: float | None  # per ready pod; None when none is ready
    good: float
    held: bool
    extrapolated: bool


@dataclass
class Result:
    policy: str
    targets: dict[str, float]
    slo_attainment: float
    good_requests: float
    avg_replicas: float
    peak_replicas: int
    attainment_per_replica: float
    extrapolated_steps: int
    steps: list[Step] = field(repr=False, default_factory=list)


def per_pod_metric(curve: Curve, metric: str, load: float) -> float:
    if metric == "utilisation":  # finished requests per second over capacity: throughput, capped by what it was
        return min(load, curve.throughput_ceiling) / curve.capacity_rps
    return curve.metric(metric, load)


def simulate(curve: Curve, ramp: Ramp, policy: Policy, settings: SimSettings = SimSettings()) -> Result:
    step_s = settings.step_s
    feeds = [MetricFeed.of(metric, settings) for metric, _ in policy.targets]
    hpa = HorizontalPodAutoscaler(HpaSpec(settings.min_replicas, settings.max_replicas,
                                          scale_up=settings.scale_up, scale_down=settings.scale_down))
    if feeds:  # settled at the first rate during the warm-up, from the pods that rate needs
        fleet = Fleet.of_ready(max(settings.min_replicas, math.ceil(ramp.factor(0.0) - 1e-9)))
        first = -round(settings.warmup_s / step_s)
    else:
        fleet = Fleet.of_ready(policy.replicas)
        first = 0
    steps: list[Step] = []
    for k in range(first, round(ramp.duration_s / step_s)):
        now = k * step_s
        rate = ramp.factor(max(0.0, now) + step_s / 2) * curve.capacity_rps  # the step's mean: the ramp is linear
        if feeds and feeds[0].value is not None:  # one HPA sync, on what the pods' metrics show
            ready = fleet.ready(now)
            proposals = [metric_proposal(fleet.size, [feed.value] * ready, target, missing=fleet.starting(now))
                         for feed, (_, target) in zip(feeds, policy.targets)]
            fleet.scale_to(hpa.reconcile(now, fleet.size, proposals), now, settings.startup_s)
        elif policy.ideal:
            fleet = Fleet.of_ready(max(settings.min_replicas, math.ceil(rate / curve.capacity_rps - 1e-9)))
        ready = fleet.ready(now)
        if ready:
            load: float | None = rate / ready
            outcome = curve.at(load)
            attainments = outcome.attainment.values()
            good = min(attainments) if settings.combine == "worst" else math.prod(attainments)
            held, extrapolated = curve.holds(load), outcome.extrapolated
            for feed in feeds:
                feed.observe(per_pod_metric(curve, feed.metric, load), step_s)
        else:  # no pod serves: every request of the step fails
            load, good, held, extrapolated = None, 0.0, False, False
        if now >= 0:
            steps.append(Step(now, rate, fleet.size, ready, load, good, held, extrapolated))
    return summarize(policy, steps)


def summarize(policy: Policy, steps: Sequence[Step]) -> Result:
    requests = sum(s.rate_rps for s in steps)  # every step lasts as long: rates weigh as requests do
    held = sum(s.rate_rps for s in steps if s.held) / requests if requests else 1.0
    good = sum(s.rate_rps * s.good for s in steps) / requests if requests else 1.0
    avg = sum(s.replicas for s in steps) / len(steps)
    return Result(policy.name, dict(policy.targets), held, good, avg, max(s.replicas for s in steps),
                  100.0 * held / avg, sum(s.extrapolated for s in steps), list(steps))


def auto_target(curve: Curve, metric: str, aim: float) -> float:
    """The metric's value on the curve at aim x capacity: where an HPA on it holds each pod."""
    return per_pod_metric(curve, metric, aim * curve.capacity_rps)


def policies(ramp: Ramp, targets: dict[str, float], extra: bool = False) -> list[Policy]:
    chosen = [Policy("headroom", (("headroom", targets["headroom"]),)),
              Policy("queue depth", (("queue", targets["queue"]),)),
              Policy("static (peak)", replicas=math.ceil(ramp.peak - 1e-9))]
    if extra:
        chosen += [Policy("headroom+queue", (("headroom", targets["headroom"]), ("queue", targets["queue"]))),
                   Policy("utilisation", (("utilisation", targets["utilisation"]),))]
    return chosen + [Policy("ideal (bound)", ideal=True)]


def table(results: Sequence[Result]) -> str:
    head = (f"{'policy':<15} {'target':>12} {'SLO attainment':>15} {'good requests':>14} {'avg replicas':>13} "
            f"{'peak':>5} {'attainment/replica':>19}")
    lines = [head, "-" * len(head)]
    for r in results:
        target = " ".join(f"{value:.3g}" for value in r.targets.values()) or "-"
        lines.append(f"{r.policy:<15} {target:>12} {100 * r.slo_attainment:>14.1f}% {100 * r.good_requests:>13.2f}% "
                     f"{r.avg_replicas:>13.2f} {r.peak_replicas:>5} {r.attainment_per_replica:>18.1f}%")
    return "\n".join(lines)


def target_arg(text: str) -> float | None:
    if text == "auto":
        return None
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("a target must be positive")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", type=Path, default=FIXTURE, help="capacity report (slo-sidecar capacity --json)")
    parser.add_argument("--ramp", default=DEFAULT_RAMP, help="minute:factor,... (factor x capacity_rps, linear)")
    parser.add_argument("--headroom-target", type=target_arg, default=None, help="auto (default) or a ratio")
    parser.add_argument("--queue-target", type=target_arg, default=None, help="auto (default) or waiting requests")
    parser.add_argument("--utilisation-target", type=target_arg, default=None, help="auto (default: --aim)")
    parser.add_argument("--aim", type=float, default=0.9, help="auto targets: each metric at this x capacity")
    parser.add_argument("--startup-s", type=float, default=60.0, help="a new pod serves after this (model load)")
    parser.add_argument("--metric-window-s", type=float, default=60.0, help="the HPA sees the mean over this")
    parser.add_argument("--headroom-tau-s", type=float, default=HEADROOM_TAU_S,
                        help="the sidecar's smoothing of headroom (EWMA time constant; 0: none)")
    parser.add_argument("--warmup-s", type=float, default=600.0, help="settling at the first rate, not counted")
    parser.add_argument("--min-replicas", type=int, default=1)
    parser.add_argument("--max-replicas", type=int, default=None, help="default: twice the static fleet")
    parser.add_argument("--combine", choices=("worst", "product"), default="worst")
    parser.add_argument("--behavior", choices=("default", "deploy"), default="default",
                        help="HPA scaling rules: Kubernetes' defaults, or deploy/base/hpa.yaml's")
    parser.add_argument("--extra", action="store_true",
                        help="also headroom+queue (one HPA, both metrics) and utilisation (requests/s / capacity)")
    parser.add_argument("--json", type=Path, help="write the results, with every step, here")
    args = parser.parse_args(argv)
    try:
        curve = Curve.from_report(from_json(args.report.read_text()))
        ramp = Ramp.parse(args.ramp)
        up, down = deploy_behavior() if args.behavior == "deploy" else (DEFAULT_SCALE_UP, DEFAULT_SCALE_DOWN)
    except (OSError, json.JSONDecodeError, ValueError, KeyError, TypeError) as error:
        print(f"autoscale_sim: {error}", file=sys.stderr)
        return 2
    static = math.ceil(ramp.peak - 1e-9)
    settings = SimSettings(startup_s=args.startup_s, metric_window_s=args.metric_window_s,
                           headroom_tau_s=args.headroom_tau_s, warmup_s=args.warmup_s, min_replicas=args.min_replicas,
                           max_replicas=args.max_replicas or 2 * max(1, static), combine=args.combine,
                           scale_up=up, scale_down=down)
    given = {"headroom": args.headroom_target, "queue": args.queue_target, "utilisation": args.utilisation_target}
    targets = {name: value or auto_target(curve, name, args.aim) for name, value in given.items()}
    chosen = policies(ramp, targets, args.extra)
    if not curve.queue_depth:  # nothing to scale on: the report has neither queue depth nor queue time
        chosen = [p for p in chosen if all(metric != "queue" for metric, _ in p.targets)]
    results = [simulate(curve, ramp, p, settings) for p in chosen]

    limit = curve.holding_limit()
    print(f"capacity report {args.report}: capacity {curve.capacity_rps:g} req/s per pod; "
          f"every objective holds up to {limit:.3g} req/s on the interpolated curve")
    if curve.capacity_rps > limit + 1e-9:
        print("  note: capacity_rps is above that limit: a fleet sized by it misses at its peak")
    if curve.left_out:
        print(f"  note: no attainment for {', '.join(curve.left_out)} at any step (client view only): left out")
    if not curve.queue_depth:
        print("  note: the report has no queue depth and no p90 queue time: no queue-depth policy")
    elif curve.queue_estimated:
        print("  note: no queue_depth_mean in the report: queue depth estimated as rate x p90 queue time")
    print(f"ramp {args.ramp} (minute:x capacity), {ramp.duration_s / 60:g} min; HPA sync {settings.step_s:g} s "
          f"({args.behavior} behavior), pod start-up {settings.startup_s:g} s, metric window "
          f"{settings.metric_window_s:g} s (headroom then EWMA {settings.headroom_tau_s:g} s), "
          f"replicas {settings.min_replicas}..{settings.max_replicas}")
    for name, value in targets.items():
        if any(name == metric for p in chosen for metric, _ in p.targets):
            how = "given" if given[name] else f"auto: the curve at {args.aim:g} x capacity"
            print(f"  {name} target {value:.3g} ({how})")
    print()
    print(table(results))
    for r in results:
        if r.extrapolated_steps:
            print(f"  {r.policy}: {r.extrapolated_steps} steps beyond the report's highest rate (extrapolated)")
    print()
    print("SLO attainment: requests served while every objective held; good requests: requests meeting every "
          f"target ({args.combine} SLO); attainment/replica: SLO attainment % per average replica")
    print(f"reference: {REFERENCE}")
    if args.json:
        args.json.write_text(json.dumps({
            "report": str(args.report), "capacity_rps": curve.capacity_rps, "holding_limit_rps": limit,
            "ramp": args.ramp, "behavior": args.behavior, "settings": asdict(settings), "aim": args.aim,
            "targets": targets, "results": [asdict(r) for r in results], "reference": REFERENCE}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
