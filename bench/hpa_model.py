"""The Kubernetes HorizontalPodAutoscaler's algorithm, and a fleet whose new pods take a while to serve.

Pure: no I/O, no clock; every call is given the time. It follows the documented algorithm
(kubernetes.io, "Horizontal Pod Autoscaling", Algorithm details and Configurable scaling behavior)
and, where the page is silent, the controller's code (pkg/controller/podautoscaler: horizontal.go,
replica_calculator.go), for `Pods` metrics with an `AverageValue` target:

- per metric, desiredReplicas = ceil(readyPods * currentValue / targetValue), where currentValue is the
  mean over the pods that report the metric; no change while the ratio is within 1 +- tolerance (0.1);
- pods without a metric (a pod still loading its model: its sidecar has no engine to read, the adapter
  returns no sample) count as 0 on a scale-up and as exactly the target on a scale-down, and the ratio is
  computed again; if that flips the direction, or falls within the tolerance, nothing changes;
- with several metrics the largest proposal wins;
- stabilisation: on a scale-up the lowest recommendation of the scale-up window (default 0 s: none), on a
  scale-down the highest of the scale-down window (default 300 s), the current one included; a record
  counts while it is younger than the window (strictly: one exactly 300 s old has left it);
- rate limits: scale-up by at most max(4 pods, 100%) per 15 s, scale-down by at most 100% per 15 s (the
  defaults); the change already made within a policy's period counts against it;
- minReplicas / maxReplicas bound the result; the controller syncs every 15 s
  (--horizontal-pod-autoscaler-sync-period).

The defaults, as the HPAScalingRules API reference states them: "For scale up: allow doubling the number of
pods, or an absolute change of 4 pods in a 15s window. For scale down: allow all pods to be removed in a 15s
window"; stabilisation "For scale up: 0 ... For scale down: 300"; selectPolicy Max.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

SYNC_PERIOD_S = 15.0
TOLERANCE = 0.1


@dataclass(frozen=True)
class ScalingPolicy:
    """One HPAScalingPolicy: `kind` "Pods" (value pods) or "Percent" (value % of the period's start) per period."""

    kind: str
    value: int
    period_s: float

    def __post_init__(self) -> None:
        if self.kind not in ("Pods", "Percent"):
            raise ValueError(f"policy type must be Pods or Percent, not {self.kind!r}")
        if self.value <= 0 or self.period_s <= 0:
            raise ValueError("a policy's value and period must be positive")


@dataclass(frozen=True)
class ScalingRules:
    """HPAScalingRules for one direction. `select` "Max" takes the policy allowing the largest change."""

    stabilization_window_s: float
    policies: tuple[ScalingPolicy, ...]
    select: str = "Max"

    def __post_init__(self) -> None:
        if self.select not in ("Max", "Min", "Disabled"):
            raise ValueError(f"selectPolicy must be Max, Min or Disabled, not {self.select!r}")


DEFAULT_SCALE_UP = ScalingRules(0.0, (ScalingPolicy("Percent", 100, 15.0), ScalingPolicy("Pods", 4, 15.0)))
DEFAULT_SCALE_DOWN = ScalingRules(300.0, (ScalingPolicy("Percent", 100, 15.0),))


@dataclass(frozen=True)
class HpaSpec:
    """What an autoscaling/v2 HorizontalPodAutoscaler sets, with the Kubernetes defaults."""

    min_replicas: int = 1
    max_replicas: int = 10
    tolerance: float = TOLERANCE
    scale_up: ScalingRules = DEFAULT_SCALE_UP
    scale_down: ScalingRules = DEFAULT_SCALE_DOWN

    def __post_init__(self) -> None:
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError("need 1 <= min_replicas <= max_replicas")


def metric_proposal(current_replicas: int, values: Sequence[float], target: float, *, missing: int = 0,
                    tolerance: float = TOLERANCE) -> int:
    """One `Pods` metric's replica proposal (the controller's calcPlainMetricReplicas).

    `values`: the metric of each ready pod that reports it; `missing`: pods that report nothing (starting).
    """
    if target <= 0:
        raise ValueError("the target must be positive")
    if not values:
        raise ValueError("no pod reports the metric: the HPA cannot compute a proposal")
    ratio = sum(values) / len(values) / target
    if missing == 0:
        if abs(1.0 - ratio) <= tolerance:
            return current_replicas
        return math.ceil(ratio * len(values))
    # Missing pods: the target on a scale-down, 0 on a scale-up (both damp the change), then again.
    filled = sum(values) + (missing * target if ratio < 1.0 else 0.0)
    pods = len(values) + missing
    new_ratio = filled / pods / target
    if abs(1.0 - new_ratio) <= tolerance or (ratio < 1.0 < new_ratio) or (ratio > 1.0 > new_ratio):
        return current_replicas
    proposal = math.ceil(new_ratio * pods)
    if (new_ratio < 1.0 and proposal > current_replicas) or (new_ratio > 1.0 and proposal < current_replicas):
        return current_replicas
    return proposal


@dataclass
class HorizontalPodAutoscaler:
    """The controller's state for one HPA: past recommendations and scale events; `reconcile` is one sync."""

    spec: HpaSpec = field(default_factory=HpaSpec)
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    scale_up_events: list[tuple[float, int]] = field(default_factory=list)
    scale_down_events: list[tuple[float, int]] = field(default_factory=list)

    def reconcile(self, now: float, current_replicas: int, proposals: Sequence[int]) -> int:
        """The replica count after one sync at `now`, given each metric's proposal. Records what it did."""
        spec = self.spec
        if current_replicas > spec.max_replicas:
            desired = spec.max_replicas
        elif current_replicas < spec.min_replicas:
            desired = spec.min_replicas
        else:
            if not proposals:
                return current_replicas  # no metric could be read: the controller does not scale
            desired = self._stabilize(now, current_replicas, max(proposals))
            desired = self._limit_rate(now, current_replicas, desired)
        if desired > current_replicas:
            self.scale_up_events.append((now, desired - current_replicas))
        elif desired < current_replicas:
            self.scale_down_events.append((now, current_replicas - desired))
        self._forget(now)
        return desired

    def _stabilize(self, now: float, current: int, desired: int) -> int:
        if desired >= current:
            window, pick = self.spec.scale_up.stabilization_window_s, min
        else:
            window, pick = self.spec.scale_down.stabilization_window_s, max
        recommendation = desired
        for stamp, recorded in self.recommendations:
            if stamp > now - window:
                recommendation = pick(recommendation, recorded)
        self.recommendations.append((now, desired))  # the unstabilised proposal is what is remembered
        return recommendation

    def _limit_rate(self, now: float, current: int, desired: int) -> int:
        spec = self.spec
        if desired > current:
            limit = max(current, _scale_up_limit(now, current, self.scale_up_events, self.scale_down_events,
                                                 spec.scale_up))
            return min(desired, spec.max_replicas, limit)
        if desired < current:
            limit = min(current, _scale_down_limit(now, current, self.scale_up_events, self.scale_down_events,
                                                   spec.scale_down))
            return max(desired, spec.min_replicas, limit)
        return desired

    def _forget(self, now: float) -> None:
        """Drop what no window or period can reach any more (the controller overwrites such records)."""
        keep = max(self.spec.scale_up.stabilization_window_s, self.spec.scale_down.stabilization_window_s)
        self.recommendations = [r for r in self.recommendations if r[0] > now - keep]
        longest = max(p.period_s for rules in (self.spec.scale_up, self.spec.scale_down) for p in rules.policies)
        self.scale_up_events = [e for e in self.scale_up_events if e[0] > now - longest]
        self.scale_down_events = [e for e in self.scale_down_events if e[0] > now - longest]


def _changed_within(now: float, period_s: float, events: Sequence[tuple[float, int]]) -> int:
    return sum(change for stamp, change in events if stamp > now - period_s)


def _period_start(now: float, current: int, policy: ScalingPolicy, ups: Sequence[tuple[float, int]],
                  downs: Sequence[tuple[float, int]]) -> int:
    return current - _changed_within(now, policy.period_s, ups) + _changed_within(now, policy.period_s, downs)


def _scale_up_limit(now: float, current: int, ups: Sequence[tuple[float, int]], downs: Sequence[tuple[float, int]],
                    rules: ScalingRules) -> int:
    if rules.select == "Disabled":
        return current
    proposals = []
    for policy in rules.policies:
        start = _period_start(now, current, policy, ups, downs)
        if policy.kind == "Pods":
            proposals.append(start + policy.value)
        else:  # rounded up, or a small fleet could never grow
            proposals.append(math.ceil(start * (1 + policy.value / 100)))
    return min(proposals) if rules.select == "Min" else max(proposals)


def _scale_down_limit(now: float, current: int, ups: Sequence[tuple[float, int]],
                      downs: Sequence[tuple[float, int]], rules: ScalingRules) -> int:
    if rules.select == "Disabled":
        return current
    proposals = []
    for policy in rules.policies:
        start = _period_start(now, current, policy, ups, downs)
        if policy.kind == "Pods":
            proposals.append(start - policy.value)
        else:  # truncated, as the controller's int32 conversion does
            proposals.append(int(start * (1 - policy.value / 100)))
    # Max (the largest change) is the lowest count when going down.
    return max(proposals) if rules.select == "Min" else min(proposals)


@dataclass
class Fleet:
    """The pods of a Deployment, each serving from its `ready_at` time (a new pod loads its model first).

    Scaling down removes pods that are still starting first (the ReplicaSet controller deletes not-ready
    pods before ready ones), the newest first.
    """

    ready_at: list[float] = field(default_factory=list)

    @classmethod
    def of_ready(cls, replicas: int, since: float = float("-inf")) -> Fleet:
        return cls([since] * replicas)

    @property
    def size(self) -> int:
        return len(self.ready_at)

    def ready(self, now: float) -> int:
        return sum(1 for at in self.ready_at if at <= now)

    def starting(self, now: float) -> int:
        return self.size - self.ready(now)

    def scale_to(self, replicas: int, now: float, startup_s: float) -> None:
        if replicas > self.size:
            self.ready_at += [now + startup_s] * (replicas - self.size)
        elif replicas < self.size:
            self.ready_at = sorted(self.ready_at)[:replicas]
