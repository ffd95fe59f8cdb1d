"""promtool unit tests for the generated burn-rate alerts: synthetic traffic in, page and ticket times out.

For every SLO whose SLI is made of counter selections, the generator writes
input series that a real engine could have exposed (label values that satisfy
the SLI's matchers: good requests outside the error selection, bad ones inside)
and checks when the page and ticket alerts fire, and that they stay silent
otherwise, after quiet baseline traffic: a total outage, burns of 100x,
20x and 2x, a burn that recovers, and a trickle of failures below the
minimum-traffic guard. The expected minutes come from a model of the alert
conditions (`predicted_firing`) built from the same burn tiers as the rules, so
these files check that Prometheus evaluates your spec's rules as the generator
meant them, not that the generator's tiers are right: that is
tests/test_alert_timing.py's job, which states the default spec's times from the
Workbook's arithmetic and imports nothing from here.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from re import _parser as sre_parse  # type: ignore[attr-defined]  # the stdlib's own regex parser
from typing import Any, Callable

from slo_sidecar.spec.model import Matcher, Selection, Slo, Spec

from .dump import dump
from .rules import slo_id

PER_MINUTE = 600  # requests per minute: 10 per second
# Quiet minutes before a burn: 6 hours, the page's longest window, so that window starts full of good
# traffic; a day before the 2x burn, whose ticket waits on the day-long windows (with a day of good
# traffic behind them it fires about a day in). promtool evaluates every minute of it: the 2x burn's
# is the longest replay, the others' need not be as long.
BASELINE_MIN = 360
DAY_MIN = 1440
NIGHT = "3 failures in 5 requests over a night"


@dataclass(frozen=True)
class Scenario:
    name: str
    error_ratio: float  # during the burn
    burn_min: int  # minutes of burn after the baseline, then quiet again
    length_min: int  # minutes simulated after the burn starts
    per_minute: float = PER_MINUTE
    baseline_min: int = BASELINE_MIN  # quiet minutes before the burn


def scenarios(slo: Slo) -> list[Scenario]:
    """The issue's cases, in burns of this SLO's error budget (those it can have: a ratio above 1 cannot be)."""
    budget = slo.error_budget
    every = [
        Scenario("a total outage", 1.0, 60, 60),
        Scenario("a 100x burn", 100 * budget, 60, 60),
        Scenario("a 20x burn", 20 * budget, 90, 90),
        Scenario("a 2x burn", 2 * budget, 1500, 1500, baseline_min=DAY_MIN),
        Scenario("a burn that recovers", 1.0, 10, 60),
    ]
    if 0.6 > 14.4 * budget:  # a trickle that would page on its ratio alone, without the guard
        every.append(Scenario(NIGHT, 0.6, 360, 360, per_minute=5 / 360))
    return [scenario for scenario in every if scenario.error_ratio <= 1.0]


def _ratio_and_events(scenario: Scenario, minute: int, window_min: int) -> tuple[float, float]:
    """The error ratio and the event count over the window ending `minute` minutes after the burn began.

    The windows see the data there is: the baseline, then the burn (Prometheus's rate()
    scales errors and totals alike, so their ratio is that of the increases).
    """
    covered = min(window_min, scenario.baseline_min + minute)
    start = minute - covered
    burning = max(0, min(minute, scenario.burn_min) - max(start, 0))
    return scenario.error_ratio * burning / covered, scenario.per_minute * covered


def alert_condition(slo: Slo, scenario: Scenario, tier: str, minute: int) -> bool:
    """The generated alert's condition, evaluated on the scenario: the model the promtool test checks."""
    for alert in slo.burn_alerts():
        if alert.tier != tier:
            continue
        threshold = alert.factor * slo.error_budget
        long_ratio, long_events = _ratio_and_events(scenario, minute, alert.long_s // 60)
        short_ratio, _ = _ratio_and_events(scenario, minute, alert.short_s // 60)
        if long_ratio > threshold and short_ratio > threshold and long_events >= alert.min_events:
            return True
    return False


def predicted_firing(slo: Slo, scenario: Scenario, tier: str) -> list[tuple[int, int]]:
    """Minutes after the burn starts when the condition holds, as [start, end) runs."""
    runs, start = [], None
    for minute in range(scenario.length_min + 1):
        holds = alert_condition(slo, scenario, tier, minute)
        if holds and start is None:
            start = minute
        elif not holds and start is not None:
            runs.append((start, minute))
            start = None
    if start is not None:
        runs.append((start, scenario.length_min + 1))
    return runs


def checks(slo: Slo, scenario: Scenario, tier: str) -> list[tuple[int, bool]]:
    """(minute, firing?) points that hold whatever the evaluation lag: one step of rule order, then `for:`."""
    runs = predicted_firing(slo, scenario, tier)
    if not runs:
        return [(scenario.length_min // 2, False), (scenario.length_min, False)]
    points = []
    lag = 1 + (1 if tier == "page" else 10)  # a step for the recording rules, then for:
    for start, end in runs:
        points.append((max(0, start - 1), False))
        if start + lag + 1 < end:
            points.append((start + lag + 1, True))
        if end + 2 <= scenario.length_min:
            points.append((end + 2, False))  # resolved
    return points


# --- label values that satisfy matchers -------------------------------------------------------------

def _example(pattern: str) -> list[str]:
    """Strings the regex matches in full: one per top-level branch (the stdlib parser gives the tree)."""
    def walk(items: Any) -> str:
        text = ""
        for op, arg in items:
            name = str(op)
            if name == "LITERAL":
                text += chr(arg)
            elif name == "ANY":
                text += "0"
            elif name == "IN":
                first = arg[0]
                text += chr(first[1]) if str(first[0]) == "LITERAL" else (
                    chr(first[1][0]) if str(first[0]) == "RANGE" else "0")
            elif name in ("MAX_REPEAT", "MIN_REPEAT"):
                low, _, body = arg
                text += walk(body) * max(low, 0)
            elif name == "SUBPATTERN":
                text += walk(arg[-1])
            elif name == "BRANCH":
                text += walk(arg[1][0])
            elif name in ("AT",):
                continue
            else:
                raise ValueError(name)
        return text

    parsed = sre_parse.parse(pattern)
    if len(parsed) == 1 and str(parsed[0][0]) == "BRANCH":
        return [walk(branch) for branch in parsed[0][1][1]]
    return [walk(parsed)]


def _candidates(matchers: list[Matcher], label: str) -> list[str]:
    values = {"", "other"}
    for matcher in matchers:
        if matcher.label != label:
            continue
        if matcher.op in ("=", "!="):
            values.add(matcher.value)
        else:
            try:
                values.update(_example(matcher.value))
            except (ValueError, re.error):
                pass
    return sorted(values)


def witness(inside: list[Matcher], outside: list[Matcher] | None = None) -> dict[str, str] | None:
    """A label set matching every `inside` matcher and failing the `outside` selection, if one is found."""
    every = [*inside, *(outside or [])]
    labels = sorted({m.label for m in every})
    for values in itertools.product(*(_candidates(every, label) for label in labels)):
        candidate = dict(zip(labels, values))
        if all(m.matches(candidate) for m in inside) and not (
                outside is not None and all(m.matches(candidate) for m in outside)):
            return {k: v for k, v in candidate.items() if v}
    return None


def _series(selection: Selection, labels: dict[str, str]) -> str:
    metric = selection.metric
    inner = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return f"{metric}{{{inner}}}" if inner else metric


def _values(scenario: Scenario, share: Callable[[bool], float]) -> str:
    """Cumulative counter values, one a minute, in promtool's `start+step x count` notation."""
    segments = [(scenario.baseline_min, False), (min(scenario.burn_min, scenario.length_min), True),
                (max(0, scenario.length_min - scenario.burn_min), False)]
    text, value = [], 0.0
    for minutes, burning in segments:
        if minutes <= 0:
            continue
        step = scenario.per_minute * share(burning)
        text.append(f"{value:.10g}+{step:.10g}x{minutes - 1}")
        value += step * minutes
    text.append(f"{value:.10g}")
    return " ".join(text)


def input_series(slo: Slo, scenario: Scenario) -> list[dict[str, str]] | None:
    """Series for good and bad requests, or None when this SLI's selections cannot be witnessed."""
    if slo.sli.errors is None or slo.sli.total is None:
        return None
    # One source alone: the probes' series stay absent, as with no sidecar beside the engine, which the rules
    # must read as nothing lost; and a correctness SLI's golden probes stand without vLLM's count of NaN-logit
    # requests, as on a vLLM that does not count them, and without GPU XIDs, as on a node without NVML.
    errors, total = slo.sli.errors.first_source(), slo.sli.total.first_source()
    ratio = scenario.error_ratio
    def good_share(burning: bool) -> float:
        return 1 - ratio if burning else 1.0

    def bad_share(burning: bool) -> float:
        return ratio if burning else 0.0

    if len(errors.terms) == 1 and len(total.terms) == 1:  # availability, goodput: bad inside errors, good outside
        error_sel, total_sel = errors.terms[0][1], total.terms[0][1]
        bad = witness([*total_sel.matchers, *error_sel.matchers])
        good = witness(list(total_sel.matchers), list(error_sel.matchers) if error_sel.metric == total_sel.metric
                       else None)
        if bad is None or good is None:
            return None
        series = [{"series": _series(total_sel, good), "values": _values(scenario, good_share)},
                  {"series": _series(total_sel, bad), "values": _values(scenario, bad_share)}]
        if error_sel.metric != total_sel.metric:
            series.append({"series": _series(error_sel, bad), "values": _values(scenario, bad_share)})
        return series
    # latency: errors = count - bucket{le}, total = count
    (_, count), (_, bucket) = errors.terms
    labels = witness([m for m in bucket.matchers if m.label != "le"])
    if labels is None:
        return None
    le = witness([m for m in bucket.matchers if m.label == "le"])["le"]
    return [{"series": _series(count, labels), "values": _values(scenario, lambda burning: 1.0)},
            {"series": _series(bucket, {**labels, "le": le}), "values": _values(scenario, good_share)}]


def unit_tests(spec: Spec, slo: Slo, rule_files: list[str]) -> str | None:
    """A promtool test file for one SLO's alerts, or None when its SLI cannot be fed synthetic series."""
    tests = []
    for scenario in scenarios(slo):
        series = input_series(slo, scenario)
        if series is None:
            return None
        expressions = []
        for tier in ("page", "ticket"):
            if not getattr(slo, tier).enabled:
                continue
            for minute, firing in checks(slo, scenario, tier):
                query = (f'count(ALERTS{{alertname="{slo.alert_name}",alertstate="firing",tier="{tier}",'
                         f'sloth_id="{slo_id(spec, slo)}"}})')
                expressions.append({"expr": query, "eval_time": f"{scenario.baseline_min + minute}m",
                                    "exp_samples": [{"labels": "{}", "value": 1}] if firing else []})
        tests.append({"name": f"{slo.key}: {scenario.name}", "interval": "1m", "input_series": series,
                      "promql_expr_test": expressions})
    return dump({"rule_files": rule_files, "evaluation_interval": "1m", "tests": tests})
