"""The HPA algorithm (bench/hpa_model.py) against the Kubernetes docs' worked examples, and the autoscaling
simulation (bench/autoscale_sim.py): its curve interpolation and the static fleet on the fixture report.

Every expected value is worked out by hand in the test, from the documented rules."""

from __future__ import annotations

import json
import math

import pytest

from bench.autoscale_sim import (
    DEFAULT_RAMP, FIXTURE, Curve, MetricFeed, Policy, Ramp, ReportError, SimSettings, Step, deploy_behavior, main,
    simulate, summarize)
from bench.hpa_model import (
    DEFAULT_SCALE_DOWN, DEFAULT_SCALE_UP, Fleet, HorizontalPodAutoscaler, HpaSpec, ScalingPolicy, ScalingRules,
    metric_proposal)
from slo_sidecar.spec.capacity_report import from_json

# --- the formula: desiredReplicas = ceil(currentReplicas * currentMetricValue / desiredMetricValue) ---------------


def test_docs_example_double_and_half() -> None:
    # "if the current metric value is 200m, and the desired value is 100m, the number of replicas will be doubled,
    # since 200.0 / 100.0 == 2.0. If the current value is instead 50m, you'll halve the number of replicas"
    assert metric_proposal(4, [200] * 4, 100) == 8
    assert metric_proposal(4, [50] * 4, 100) == 2
    # the mean over the pods is what counts: (100 + 300) / 2 = 200m -> 2 x 2 pods
    assert metric_proposal(2, [100, 300], 100) == 4


def test_within_tolerance_no_change() -> None:
    # |1 - ratio| <= 0.1 keeps the count, even where ceil would move it: 10 pods at 109m / 100m -> ceil(10.9) = 11
    assert metric_proposal(10, [109] * 10, 100) == 10
    assert metric_proposal(10, [91] * 10, 100) == 10
    # just outside: 111m -> ceil(11.1) = 12; 89m -> ceil(8.9) = 9
    assert metric_proposal(10, [111] * 10, 100) == 12
    assert metric_proposal(10, [89] * 10, 100) == 9
    # a tolerance of its own
    assert metric_proposal(10, [109] * 10, 100, tolerance=0.05) == 11


def test_missing_metrics_damp_both_directions() -> None:
    # Scale-up: 2 ready pods at 200m (ratio 2), 2 starting pods without a metric count as 0:
    # (200 + 200 + 0 + 0) / 4 = 100m, ratio 1.0: within tolerance, no change (the starting pods will take load).
    assert metric_proposal(4, [200, 200], 100, missing=2) == 4
    # 2 ready at 150m (ratio 1.5, up), 2 missing as 0: (300 + 0) / 4 = 75m, ratio 0.75 (down): the direction
    # flips, so no change, where the ready pods alone would give ceil(1.5 x 2) = 3, a scale-down from 4.
    assert metric_proposal(4, [150, 150], 100, missing=2) == 4
    assert metric_proposal(2, [150, 150], 100) == 3
    # 2 ready at 400m, 2 missing: (800 + 0) / 4 = 200m, ratio 2 -> ceil(2 x 4) = 8
    assert metric_proposal(4, [400, 400], 100, missing=2) == 8
    # Scale-down: 2 ready at 50m (ratio 0.5), 2 missing count as the target, 100m:
    # (50 + 50 + 100 + 100) / 4 = 75m, ratio 0.75 -> ceil(0.75 x 4) = 3, not ceil(0.5 x 2) = 1.
    assert metric_proposal(4, [50, 50], 100, missing=2) == 3


def test_largest_proposal_wins() -> None:
    # "If multiple metrics are specified, the HPA calculates a proposal for each and takes the largest."
    hpa = HorizontalPodAutoscaler(HpaSpec(min_replicas=1, max_replicas=20))
    assert hpa.reconcile(0.0, 4, [2, 8, 5]) == 8  # within the scale-up limit max(4 + 4, 2 x 4) = 8


# --- behaviour: stabilisation, rate limits, bounds -----------------------------------------------------------------


def test_default_behaviour_is_the_documented_one() -> None:
    assert DEFAULT_SCALE_UP == ScalingRules(0.0, (ScalingPolicy("Percent", 100, 15.0), ScalingPolicy("Pods", 4, 15.0)))
    assert DEFAULT_SCALE_DOWN == ScalingRules(300.0, (ScalingPolicy("Percent", 100, 15.0),))
    assert HpaSpec().tolerance == 0.1


def test_a_dip_shorter_than_the_window_does_not_scale_down() -> None:
    # 10 pods recommended at t = 0, then 5 at every 15 s sync. The scale-down takes the highest recommendation
    # younger than 300 s: the 10 of t = 0 is in the window until t = 300 (0 > 300 - 300 is false there).
    hpa = HorizontalPodAutoscaler(HpaSpec(max_replicas=20))
    assert hpa.reconcile(0.0, 10, [10]) == 10
    for t in range(15, 300, 15):  # 19 syncs, 285 s of lower demand
        assert hpa.reconcile(float(t), 10, [5]) == 10, t
    # the dip ends before the window does: nothing was given back
    assert hpa.reconcile(300.0, 10, [10]) == 10


def test_a_dip_for_the_whole_window_scales_down() -> None:
    hpa = HorizontalPodAutoscaler(HpaSpec(max_replicas=20))
    hpa.reconcile(0.0, 10, [10])
    for t in range(15, 300, 15):
        assert hpa.reconcile(float(t), 10, [5]) == 10
    # at t = 300 every record younger than 300 s says 5; 100% per 15 s allows down to 0, min 1: 5
    assert hpa.reconcile(300.0, 10, [5]) == 5


def test_scale_up_policy_limit() -> None:
    # Default: add max(4 pods, 100%) per 15 s. From 1 pod towards 20: max(1 + 4, 2 x 1) = 5; 15 s later the
    # first change has left the period (0 > 15 - 15 is false): max(5 + 4, 2 x 5) = 10; then max(14, 20) = 20.
    hpa = HorizontalPodAutoscaler(HpaSpec(max_replicas=50))
    assert hpa.reconcile(0.0, 1, [20]) == 5
    assert hpa.reconcile(15.0, 5, [20]) == 10
    assert hpa.reconcile(30.0, 10, [20]) == 20


def test_change_within_the_period_counts_against_the_limit() -> None:
    # Two syncs 5 s apart: the 4 pods added at t = 0 are in the period, so it started at 1 pod: max(1 + 4, 2) = 5.
    hpa = HorizontalPodAutoscaler(HpaSpec(max_replicas=50))
    assert hpa.reconcile(0.0, 1, [20]) == 5
    assert hpa.reconcile(5.0, 5, [20]) == 5


def test_scale_down_policy_and_bounds() -> None:
    one_per_minute = ScalingRules(0.0, (ScalingPolicy("Pods", 1, 60.0),))
    hpa = HorizontalPodAutoscaler(HpaSpec(min_replicas=2, max_replicas=10, scale_down=one_per_minute))
    assert hpa.reconcile(0.0, 10, [1]) == 9  # one pod per 60 s
    assert hpa.reconcile(15.0, 9, [1]) == 9  # that pod left within the period: 10 - 1 = 9 is the floor
    assert hpa.reconcile(60.0, 9, [1]) == 8  # 0 > 60 - 60 is false: a new period
    # 100% per 15 s and no window: straight to min_replicas, never below
    fast = HorizontalPodAutoscaler(HpaSpec(min_replicas=2, max_replicas=10, scale_down=ScalingRules(
        0.0, (ScalingPolicy("Percent", 100, 15.0),))))
    assert fast.reconcile(0.0, 10, [1]) == 2
    # max_replicas caps a proposal within the rate limit: 8 -> max(12, 16) allowed, max 10
    assert HorizontalPodAutoscaler(HpaSpec(max_replicas=10)).reconcile(0.0, 8, [50]) == 10
    # a count outside the bounds is brought inside first
    assert HorizontalPodAutoscaler(HpaSpec(min_replicas=3, max_replicas=10)).reconcile(0.0, 1, [1]) == 3


def test_pod_start_up_delay() -> None:
    fleet = Fleet.of_ready(2)
    fleet.scale_to(4, now=100.0, startup_s=60.0)
    assert fleet.size == 4  # all four cost from t = 100
    assert (fleet.ready(100.0), fleet.ready(159.0), fleet.ready(160.0)) == (2, 2, 4)
    assert fleet.starting(130.0) == 2
    fleet.scale_to(3, now=130.0, startup_s=60.0)  # a scale-down takes a starting pod first
    assert (fleet.ready(130.0), fleet.ready(160.0)) == (2, 3)
    fleet.scale_to(1, now=200.0, startup_s=60.0)
    assert (fleet.size, fleet.ready(200.0)) == (1, 1)


def test_deploy_behaviour_reads_an_hpa_manifest(tmp_path) -> None:
    manifest = tmp_path / "hpa.yaml"
    manifest.write_text("""
spec:
  behavior:
    scaleUp:
      stabilizationWindowSeconds: 0
      policies: [{type: Pods, value: 1, periodSeconds: 120}]
    scaleDown:
      stabilizationWindowSeconds: 600
      policies: [{type: Pods, value: 1, periodSeconds: 300}]
""")
    up, down = deploy_behavior(manifest)
    assert up == ScalingRules(0.0, (ScalingPolicy("Pods", 1, 120.0),))
    assert down == ScalingRules(600.0, (ScalingPolicy("Pods", 1, 300.0),))
    manifest.write_text("spec:\n  behavior:\n    scaleDown: {stabilizationWindowSeconds: 60}\n")
    up, down = deploy_behavior(manifest)  # what a direction leaves out is Kubernetes' default
    assert up == DEFAULT_SCALE_UP and down == ScalingRules(60.0, DEFAULT_SCALE_DOWN.policies)
    deploy_behavior()  # the shipped manifest reads


# --- the curve -----------------------------------------------------------------------------------------------------


def report(steps: list[tuple[float, float | None, float | None, float]], capacity: float | None = 2.0) -> dict:
    """A capacity report with one SLO (objective 99%): (rate, attainment, headroom, queue depth) per step."""
    return {"version": "slo-sidecar/capacity/v1", "capacity_rps": capacity, "steps": [
        {"rate_rps": r, "duration_s": 30.0, "sent": 100, "achieved_rps": r, "latency": {}, "passed": None,
         "slos": {"ttft": {"objective": 99.0, "attainment": a, "events": 100, "needed": 100, "passed": None,
                           "view": "server"}},
         "headroom": h, "queue_depth_mean": q}
        for r, a, h, q in steps]}


def curve_of(data: dict) -> Curve:
    """The curve of a report as the bench reads one: through the contract's reader."""
    return Curve.from_report(from_json(json.dumps(data)))


CURVE = curve_of(report([(3.0, 0.90, 1.5, 4.0), (1.0, 1.0, 0.2, 0.0), (2.0, 0.99, 0.5, 1.0)]))


def test_interpolation_between_steps() -> None:
    # steps are sorted by rate; 1.5 is halfway between 1.0 and 2.0
    at = CURVE.at(1.5)
    assert at.attainment["ttft"] == pytest.approx(0.995)
    assert (at.headroom, at.queue_depth, at.extrapolated) == (pytest.approx(0.35), pytest.approx(0.5), False)
    # a quarter of the way from 2.0 to 3.0: 0.99 - 0.25 x 0.09, 0.5 + 0.25 x 1.0, 1.0 + 0.25 x 3.0
    at = CURVE.at(2.25)
    assert (at.attainment["ttft"], at.headroom, at.queue_depth) == (
        pytest.approx(0.9675), pytest.approx(0.75), pytest.approx(1.75))


def test_below_the_first_step_holds_its_values() -> None:
    at = CURVE.at(0.25)
    assert (at.attainment["ttft"], at.headroom, at.queue_depth, at.extrapolated) == (1.0, 0.2, 0.0, False)


def test_beyond_the_last_step_is_pessimistic() -> None:
    # at 4.0: attainment min(line 0.90 - 0.09 = 0.81, good req/s capped 0.90 x 3 / 4 = 0.675) = 0.675
    # headroom max(line 1.5 + 1.0 = 2.5, proportional 1.5 x 4 / 3 = 2.0) = 2.5
    # queue max(line 4 + 3 = 7, proportional 4 x 4 / 3 = 5.33) = 7
    at = CURVE.at(4.0)
    assert (at.attainment["ttft"], at.headroom, at.queue_depth, at.extrapolated) == (
        pytest.approx(0.675), pytest.approx(2.5), pytest.approx(7.0), True)
    # far out, the line would go below 0: floored
    assert CURVE.at(20.0).attainment["ttft"] == 0.0
    # one step only: proportional growth, good requests per second capped
    single = curve_of(report([(2.0, 1.0, 0.4, 1.0)])).at(4.0)
    assert (single.attainment["ttft"], single.headroom, single.queue_depth) == (0.5, 0.8, 2.0)


def test_holding_limit_is_where_the_first_objective_falls() -> None:
    # 99% holds at 2.0 (0.99) and fails at 3.0: the crossing is at 2.0 exactly
    assert CURVE.holding_limit() == pytest.approx(2.0)
    assert CURVE.holds(2.0) and not CURVE.holds(2.01)


def test_bad_reports_are_refused() -> None:
    with pytest.raises(ValueError, match="version"):  # the contract's reader refuses it
        curve_of({**report([(1.0, 1.0, 0.1, 0.0)]), "version": "v0"})
    with pytest.raises(ReportError):
        curve_of(report([]))
    with pytest.raises(ReportError):  # no rate held every objective
        curve_of(report([(1.0, 0.5, 0.1, 0.0)], capacity=None))


def test_a_rate_loaded_twice_takes_its_longer_run() -> None:
    # `capacity` confirms the rate it found with a step twice as long: that run stands for the rate.
    twice = report([(1.0, 1.0, 0.1, 0.0), (2.0, 0.995, 0.3, 0.2), (2.0, 0.99, 0.4, 0.5), (3.0, 0.5, 2.0, 6.0)])
    twice["steps"][1]["duration_s"], twice["steps"][2]["duration_s"] = 60.0, 120.0
    at = curve_of(twice).at(2.0)
    assert (at.attainment["ttft"], at.headroom, at.queue_depth) == (0.99, 0.4, 0.5)


def test_steps_without_a_value_are_left_out_of_that_series() -> None:
    # The middle step judged ttft from the client's view only (attainment None) and observed no latency
    # (headroom None): each series interpolates over the steps that have it, 1.0 to 3.0.
    curve = curve_of(report([(1.0, 1.0, 0.2, 0.0), (2.0, None, None, 1.0), (3.0, 0.9, 1.0, 4.0)]))
    at = curve.at(2.0)
    assert (at.attainment["ttft"], at.headroom, at.queue_depth) == (pytest.approx(0.95), pytest.approx(0.6), 1.0)


def test_queue_depth_from_queue_time_when_the_report_has_none() -> None:
    # Little's law with the p90 for the mean: waiting = rate x queue time; 2 req/s x 0.5 s = 1.0
    data = report([(1.0, 1.0, 0.2, 0.0), (2.0, 0.99, 0.5, 0.0)])
    for step, latency in zip(data["steps"], ({"queue": 0.1}, {"queue_p90_s": 0.5})):  # the writer's key, the draft's
        del step["queue_depth_mean"]
        step["latency"] = latency
    curve = curve_of(data)
    assert curve.queue_estimated and curve.queue_depth == [(1.0, 0.1), (2.0, 1.0)]


def test_ramp() -> None:
    ramp = Ramp.parse(DEFAULT_RAMP)
    assert (ramp.duration_s, ramp.peak) == (3600.0, 10.0)
    # 2 -> 10 over 20 minutes: 6 at minute 10; held at 10; 10 -> 1 over 20 minutes: 5.5 at minute 50
    assert (ramp.factor(600.0), ramp.factor(1800.0), ramp.factor(3000.0)) == (6.0, 10.0, 5.5)
    with pytest.raises(ValueError):
        Ramp.parse("5:2,10:3")  # must start at minute 0


# --- the simulation --------------------------------------------------------------------------------------------------


def test_summary_weights_requests_and_time() -> None:
    steps = [Step(0.0, 30.0, 2, 1, 30.0, 0.5, False, True), Step(15.0, 10.0, 4, 4, 2.5, 1.0, True, False)]
    result = summarize(Policy("x", (("headroom", 1.0),)), steps)
    assert result.slo_attainment == pytest.approx(10 / 40)  # requests served while the objectives held
    assert result.good_requests == pytest.approx((30 * 0.5 + 10 * 1.0) / 40)
    assert result.avg_replicas == 3.0  # the starting pod costs too: (2 + 4) / 2
    assert (result.peak_replicas, result.extrapolated_steps) == (4, 1)
    assert result.attainment_per_replica == pytest.approx(25.0 / 3)


FIXTURE_CURVE = Curve.from_report(from_json(FIXTURE.read_text()))


def test_fixture_capacity_is_inside_the_curve() -> None:
    # capacity_rps is the highest rate that passed (3.0; 3.25 failed). The binding SLO is ttft (99%):
    # 998/1004 good at 3.0, 997/1009 at 3.25; it reaches 0.99 at 3.0 + 0.25 x (a - 0.99) / (a - b) = 3.170.
    assert FIXTURE_CURVE.capacity_rps == 3.0
    a, b = 998 / 1004, 997 / 1009
    assert FIXTURE_CURVE.holding_limit() == pytest.approx(3.0 + 0.25 * (a - 0.99) / (a - b), abs=1e-6)


def test_static_fleet_sized_for_the_peak_holds_every_objective() -> None:
    # ceil(peak / capacity) = ceil(10 x 3.0 / 3.0) = 10 pods take at most 30 / 10 = 3.0 req/s each, and the curve
    # holds every objective up to capacity_rps: it is the highest rate the capacity search saw pass, every step
    # at or below it passed (the search stops at the first failure above the last pass), and between two points
    # that meet an objective a straight line meets it too. So every step of the hour holds: 100%.
    ramp = Ramp.parse(DEFAULT_RAMP)
    result = simulate(FIXTURE_CURVE, ramp, Policy("static", replicas=math.ceil(ramp.peak)))
    assert result.slo_attainment == 1.0
    assert (result.avg_replicas, result.peak_replicas, result.extrapolated_steps) == (10.0, 10, 0)
    assert len(result.steps) == 3600 / 15
    # At the peak each pod runs at 3.0 req/s, a step of the report; the worst SLO there is goodput, 995/1004.
    peak = [s for s in result.steps if s.rate_rps == pytest.approx(30.0)]
    assert len(peak) == 20 * 4 and all(s.good == pytest.approx(995 / 1004) for s in peak)
    # One pod fewer misses at the peak: 30 / 9 = 3.33 req/s per pod, past 3.170.
    fewer = simulate(FIXTURE_CURVE, ramp, Policy("static", replicas=9))
    assert fewer.slo_attainment < 1.0


def test_autoscaled_fleet_scales_up_at_the_policy_rate_and_waits_for_start_up() -> None:
    # 1 x capacity on one pod: headroom there (the step at 3.0) is 0.40, target 0.42: ratio 0.95, within
    # tolerance, so the warm-up settles on 1 pod. At minute 1 the rate jumps to 4 x capacity = 12 req/s; headroom
    # at 12 on one pod is far beyond the curve (3.4 + 5.36 x 8 = 46.3). The sync at t = 75 sees it in its 60 s
    # window (no smoothing here): mean 11.9, clamped to 4 as the sidecar does, ratio 9.5: 10 pods wanted,
    # the default limit allows max(1 + 4, 2 x 1) = 5. At t = 90 (4 pods starting, counted as 0: (4 + 0) / 5 =
    # 0.8, ratio 1.9, ceil(1.9 x 5) = 10) the 4 pods added at t = 75 are outside the 15 s period again:
    # max(5 + 4, 2 x 5) = 10 allowed, 10 wanted, max_replicas 8.
    # With 120 s of start-up the pods created at t = 75 serve from t = 195, those of t = 90 from t = 210;
    # until then one pod takes 12.4 req/s and misses, while all 8 cost.
    ramp = Ramp.parse("0:1,1:1,1.001:4,10:4")
    settings = SimSettings(startup_s=120.0, max_replicas=8, headroom_tau_s=0.0)
    result = simulate(FIXTURE_CURVE, ramp, Policy("headroom", (("headroom", 0.42),)), settings)
    by_time = {s.t_s: s for s in result.steps}
    assert all((by_time[t].replicas, by_time[t].ready) == (1, 1) for t in (0.0, 15.0, 30.0, 45.0, 60.0))
    assert (by_time[75.0].replicas, by_time[75.0].ready) == (5, 1)
    assert (by_time[90.0].replicas, by_time[90.0].ready) == (8, 1)
    assert (by_time[180.0].ready, by_time[195.0].ready, by_time[210.0].ready) == (1, 5, 8)
    assert not any(by_time[t].held for t in range(60, 195, 15))
    assert by_time[210.0].held  # 12 / 8 = 1.5 req/s per pod


def test_metric_feeds_average_then_clamp_and_smooth_headroom() -> None:
    # Headroom: the mean over the window (60 s = 4 steps), clamped to 0-4, then the sidecar's EWMA (tau 60 s):
    # first 0.4 as is; then mean(0.4, 2.0) = 1.2: 0.4 + (1 - e^-0.25) x 0.8 = 0.57696; then mean(0.4, 2, 20)
    # = 7.47, clamped to 4: 0.57696 + (1 - e^-0.25) x (4 - 0.57696) = 1.33413.
    feed = MetricFeed.of("headroom", SimSettings())
    feed.observe(0.4, 15.0)
    assert feed.value == 0.4
    feed.observe(2.0, 15.0)
    assert feed.value == pytest.approx(0.4 + (1 - math.exp(-0.25)) * 0.8)
    feed.observe(20.0, 15.0)
    assert feed.value == pytest.approx(0.57696 + (1 - math.exp(-0.25)) * (4 - 0.57696), abs=1e-5)
    # Queue depth: the plain mean over the last 4 steps (the adapter's one-minute average)
    queue = MetricFeed.of("queue", SimSettings())
    for value in (1.0, 2.0, 3.0, 4.0, 5.0):
        queue.observe(value, 15.0)
    assert queue.value == (2.0 + 3.0 + 4.0 + 5.0) / 4


def test_the_script_runs_on_the_fixture(tmp_path, capsys) -> None:
    out = tmp_path / "sim.json"
    assert main(["--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "static (peak)" in printed and "95.8%" in printed  # the published reference, as context
    data = json.loads(out.read_text())
    assert [r["policy"] for r in data["results"]] == ["headroom", "queue depth", "static (peak)", "ideal (bound)"]
    static = data["results"][2]
    assert (static["slo_attainment"], static["avg_replicas"]) == (1.0, 10.0)
    assert main(["--extra", "--behavior", "deploy"]) == 0
    assert "headroom+queue" in capsys.readouterr().out
    assert main(["--report", str(tmp_path / "missing.json")]) == 2
