"""The native spec format (`version: slo-sidecar/v1`), read into the model.

Pure code over a located YAML document; see slo.schema.json for the schema and
docs/slos.md for the defaults.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import replace
from typing import Any

from .buckets import KNOWN_BUCKETS, MEASURE_HISTOGRAMS
from .fields import DEFAULT_MIN_EVENTS, DEFAULT_SEVERITY, FieldReader, alert_name, check_alerts_can_fire
from .model import (
    CORRUPTED_REQUESTS,
    DEFAULT_IDENTITY,
    GOLDEN_PROBES,
    GPU_CORRUPTING_XIDS,
    MEASURES,
    OTHER_SLICE,
    PERIODS,
    PROBE_MISSED,
    SLO_COUNTER,
    SPEC_VERSION,
    TARGETS,
    TENANT_LABEL,
    NO_DATA,
    SLICE_AGGREGATES,
    SLICE_OPS,
    AlertTier,
    Correctness,
    EventSum,
    Matcher,
    Operational,
    Selection,
    ReleasePolicy,
    Sli,
    Slo,
    Spec,
    Timeslices,
    duration_label,
    duration_seconds,
    le_matcher,
)
from .yaml_tree import Located, Path_

TOP_FIELDS = ("version", "service", "identity", "labels", "runbook_base_url", "grafana_url", "operational",
              "correctness", "policy", "slos")
SLO_FIELDS = ("name", "description", "objective", "period", "selector", "labels", "slice_by", "slices", "sli",
              "alerting", "policy")
SLICE_FIELDS = ("objective",)
# Slices an SLO may name: each is a set of rules, alerts and sidecar windows of its own. Every value
# the spec does not name is judged together in one more slice, OTHER_SLICE.
MAX_SLICES = 20
SLICE_LABELS = (TENANT_LABEL,)  # the engine's tenant label: its values are the served names, bounded
ALERTING_FIELDS = ("name", "labels", "annotations", "min_events", "page", "ticket")
TIER_FIELDS = ("enabled", "severity", "labels", "annotations")
SLI_KINDS = ("availability", "latency", "goodput", "correctness", "timeslices")
TIMESLICE_FIELDS = ("slice", "good", "no_data", "gauge", "ratio", "quantile")
SLICE_MEASURES = ("gauge", "ratio", "quantile")
SLICE_BOUNDS_S = (10, 3600)  # the shortest and longest slice


def parse_native(doc: Located) -> Spec:
    reader = FieldReader(doc)
    top = reader.mapping(doc.value, (), TOP_FIELDS, required=("version", "service", "slos"))
    if top["version"] != SPEC_VERSION:
        raise reader.fail(("version",), f"expected {SPEC_VERSION!r} (or Sloth's 'prometheus/v1'), "
                                        f"got {top['version']!r}")
    service = reader.string(top["service"], ("service",))
    labels = reader.labels(top.get("labels"), ("labels",))
    if not isinstance(top["slos"], list) or not top["slos"]:
        raise reader.fail(("slos",), "expected a non-empty list of SLOs")
    policy = _parse_policy(reader, top.get("policy"), ("policy",))  # every SLO's, unless it sets its own
    parsed = [_parse_slo(reader, item, ("slos", i), policy) for i, item in enumerate(top["slos"])]
    names = [slo.name for slo in parsed]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise reader.fail(("slos", i, "name"), f"duplicate SLO name {name!r}")
    slos = [each for i, (slo, item) in enumerate(zip(parsed, top["slos"]))
            for each in _slices(reader, slo, item, ("slos", i))]
    operational = _parse_operational(reader, top["operational"]) if "operational" in top else None
    return Spec(service, labels, tuple(slos), operational,
                str(top.get("runbook_base_url", "docs/runbooks/")), doc.source,
                grafana_url=str(top.get("grafana_url", "")).rstrip("/"),
                identity=_parse_identity(reader, top.get("identity", list(DEFAULT_IDENTITY))),
                correctness=_parse_correctness(reader, top.get("correctness"), doc.source))


def _parse_identity(reader: FieldReader, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise reader.fail(("identity",), "expected a non-empty list of label names, like [namespace, model_name]")
    for i, label in enumerate(value):
        if not isinstance(label, str) or not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", label):
            raise reader.fail(("identity", i), f"not a valid Prometheus label name: {label!r}")
        if label in value[:i]:
            raise reader.fail(("identity", i), f"{label!r} is named twice")
    return tuple(value)


def _parse_operational(reader: FieldReader, value: Any) -> Operational | None:
    """An `operational` section asks for the operational alerts (empty: the default thresholds)."""
    if value is None:
        return Operational()
    fields = Operational.__dataclass_fields__
    values = reader.mapping(value, ("operational",), tuple(fields))
    checked = {key: reader.number(item, ("operational", key), 0, math.inf, "a number > 0")
               for key, item in values.items()}
    return Operational(**checked)


def _parse_correctness(reader: FieldReader, value: Any, source: str) -> Correctness:
    """The golden probes' settings; a relative `golden_set` is found beside the spec file."""
    if value is None:
        return Correctness()
    values = reader.mapping(value, ("correctness",), tuple(Correctness.__dataclass_fields__))
    golden_set = None
    if "golden_set" in values:
        golden_set = os.path.join(os.path.dirname(source), reader.string(values["golden_set"],
                                                                          ("correctness", "golden_set")))
    numbers = {}
    for key, what in (("tolerance", "a number > 0"), ("interval_s", "a number of seconds > 0")):
        if key in values:
            numbers[key] = reader.number(values[key], ("correctness", key), 0, math.inf, what)
    if "bad_in_a_row" in values:
        count = values["bad_in_a_row"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise reader.fail(("correctness", "bad_in_a_row"), f"expected a whole number >= 1, got {count!r}")
        numbers["bad_in_a_row"] = count
    quarantine = values.get("quarantine", Correctness.quarantine)
    if not isinstance(quarantine, bool):
        raise reader.fail(("correctness", "quarantine"), f"expected true or false, got {quarantine!r}")
    return Correctness(golden_set, quarantine=quarantine, **numbers)


def _parse_slo(reader: FieldReader, value: Any, path: Path_, service_policy: ReleasePolicy | None) -> Slo:
    slo = reader.mapping(value, path, SLO_FIELDS, required=("name", "objective", "sli"))
    name = reader.slo_name(slo["name"], (*path, "name"))
    objective = reader.objective(slo["objective"], (*path, "objective"))
    period = slo.get("period", "30d")
    if period not in PERIODS:
        raise reader.fail((*path, "period"), f"unknown compliance window {period!r}; expected one of "
                                             f"{', '.join(PERIODS)}")
    selector = reader.matchers(slo["selector"], (*path, "selector")) if "selector" in slo else ()
    sli = _parse_sli(reader, slo["sli"], (*path, "sli"), name, selector)
    alerting = reader.mapping(slo.get("alerting") or {}, (*path, "alerting"), ALERTING_FIELDS)
    tiers = {tier: _parse_tier(reader, alerting.get(tier), (*path, "alerting", tier), tier)
             for tier in ("page", "ticket")}
    min_events = alerting.get("min_events", DEFAULT_MIN_EVENTS)
    if isinstance(min_events, bool) or not isinstance(min_events, int) or min_events < 0:
        raise reader.fail((*path, "alerting", "min_events"), f"expected an integer >= 0, got {min_events!r}")
    parsed = Slo(
        name=name, description=str(slo.get("description", sli.description)), objective=objective,
        period=period, sli=sli, labels=reader.labels(slo.get("labels"), (*path, "labels")),
        alert_name=str(alerting.get("name") or alert_name(name)), min_events=min_events,
        page=tiers["page"], ticket=tiers["ticket"],
        policy=_parse_policy(reader, slo["policy"], (*path, "policy")) if "policy" in slo else service_policy)
    check_alerts_can_fire(reader, parsed, path)
    return parsed


def _parse_policy(reader: FieldReader, value: Any, path: Path_) -> ReleasePolicy | None:
    """An error-budget policy, the service's or an SLO's own (docs/rolling-out.md); None without one (an SLO's
    `policy: null` opts out of the service's)."""
    if value is None:
        return None
    values = reader.mapping(value, path, tuple(ReleasePolicy.__dataclass_fields__),
                            required=("freeze_below_budget",))
    below = values["freeze_below_budget"]
    if isinstance(below, bool) or not isinstance(below, (int, float)) or not 0 <= below <= 1:
        raise reader.fail((*path, "freeze_below_budget"), f"expected the share of the budget left, a number in "
                                                          f"[0, 1] (0: once it is spent), got {below!r}")
    burn = values.get("freeze_above_burn")
    if burn is not None:
        burn = reader.number(burn, (*path, "freeze_above_burn"), 0, math.inf, "a burn rate > 0")
    return ReleasePolicy(float(below), None if burn is None else float(burn))


def _slices(reader: FieldReader, slo: Slo, item: dict, path: Path_) -> list[Slo]:
    """A sliced SLO (`slice_by: [model]`) as one SLO per named slice, each on its tenant's events with its
    own objective, and one for every other value (`other`, the SLO's objective); else the SLO itself."""
    if "slice_by" not in item and "slices" not in item:
        return [slo]
    label = _slice_label(reader, item.get("slice_by"), (*path, "slice_by"))
    if slo.sli.source == "histogram":
        raise reader.fail((*path, "slice_by"), f"{slo.sli.histogram} has no {label} label (a tenant label on "
                                               "latency histograms multiplies their series): slice an exact "
                                               "latency SLI (`measure`, source: exact), which the engine counts "
                                               "per tenant")
    here = (*path, "slices")
    slices = item.get("slices")
    if not isinstance(slices, dict) or not slices:
        raise reader.fail(here, f"expected the {label} values judged apart, e.g. {{medical: {{objective: 99.9}}, "
                                "legal: {}}; every other value is judged in the `other` slice")
    if len(slices) > MAX_SLICES:
        raise reader.fail(here, f"{len(slices)} slices, over the cap of {MAX_SLICES} per SLO (each is a set of "
                                "rules and series of its own): name the largest tenants; the rest are judged "
                                f"together in the `{OTHER_SLICE}` slice")
    result = []
    for value, body in slices.items():
        where = (*here, value)
        if not isinstance(value, str) or not value or value == OTHER_SLICE:
            raise reader.fail(where, f"a slice is named by a {label} value other than {OTHER_SLICE!r} "
                                     f"(which holds every value not named), got {value!r}")
        spec = reader.mapping(body or {}, where, SLICE_FIELDS)
        objective = reader.objective(spec["objective"], (*where, "objective")) if "objective" in spec \
            else slo.objective
        result.append(_slice(reader, slo, Matcher(label, "=", value), {label: value}, objective, where))
    rest = "|".join(re.escape(value) for value in slices)
    result.append(_slice(reader, slo, Matcher(label, "!~", rest), {label: OTHER_SLICE}, slo.objective, here))
    return result


def _slice_label(reader: FieldReader, value: Any, path: Path_) -> str:
    if not isinstance(value, list) or len(value) != 1 or value[0] not in SLICE_LABELS:
        raise reader.fail(path, f"expected [{', '.join(SLICE_LABELS)}]: an SLO is sliced by one label, the "
                                f"engine's tenant (its values are the served names, bounded), got {value!r}")
    return value[0]


def _slice(reader: FieldReader, slo: Slo, matcher: Matcher, slice_: dict[str, str], objective: float,
           path: Path_) -> Slo:
    """One slice: the SLI's engine selections narrowed by `matcher`. A sliced availability SLI leaves out
    the probes' lost requests (they cannot say whose requests were lost: the unsliced SLO and
    LLMServiceDown judge a dead engine)."""
    sli = slo.sli

    def narrowed(events: EventSum | None) -> EventSum | None:
        if events is None:
            return None
        return events.without(PROBE_MISSED).narrowed(matcher)

    sliced = replace(slo, objective=objective, sli=replace(sli, errors=narrowed(sli.errors), total=narrowed(sli.total)),
                     labels={**slo.labels, **slice_}, slice=slice_)
    check_alerts_can_fire(reader, sliced, path)
    return sliced


def _parse_tier(reader: FieldReader, value: Any, path: Path_, tier: str) -> AlertTier:
    tier_spec = reader.mapping(value or {}, path, TIER_FIELDS)
    enabled = tier_spec.get("enabled", True)
    if not isinstance(enabled, bool):
        raise reader.fail((*path, "enabled"), f"expected true or false, got {enabled!r}")
    severity = reader.string(tier_spec.get("severity", DEFAULT_SEVERITY[tier]), (*path, "severity"))
    return AlertTier(enabled, severity, reader.labels(tier_spec.get("labels"), (*path, "labels")),
                     reader.labels(tier_spec.get("annotations"), (*path, "annotations")))


def _parse_sli(reader: FieldReader, value: Any, path: Path_, slo_name: str, selector: tuple[Matcher, ...]) -> Sli:
    sli = reader.mapping(value, path, SLI_KINDS)
    if len(sli) != 1:
        raise reader.fail(path, f"expected exactly one of {', '.join(SLI_KINDS)}")
    kind, body = next(iter(sli.items()))
    here = (*path, kind)
    if kind == "availability":
        spec = reader.mapping(body, here, ("errors", "total", "probes"), required=("errors", "total"))
        errors = _parse_selection(reader, spec["errors"], (*here, "errors"), selector)
        total = _parse_selection(reader, spec["total"], (*here, "total"), selector)
        probes = spec.get("probes", True)
        if not isinstance(probes, bool):
            raise reader.fail((*here, "probes"), f"expected true or false, got {probes!r}")
        if not probes:
            return Sli(kind, EventSum(((1, errors),)), EventSum(((1, total),)),
                       f"share of {total.promql()} that are {errors.promql()}")
        # What users lost while the engine did not answer counts on both sides (model.PROBE_MISSED).
        missed = (1, Selection(PROBE_MISSED, selector))
        return Sli(kind, EventSum(((1, errors), missed), separate_sources=True),
                   EventSum(((1, total), missed), separate_sources=True),
                   f"share of {total.promql()}, and of requests lost while the engine did not answer, "
                   f"that are {errors.promql()} or lost")
    if kind == "latency":
        return _parse_latency(reader, body, here, slo_name, selector)
    if kind == "timeslices":
        return _parse_timeslices(reader, body, here, selector)
    if kind == "correctness":
        return _correctness_sli(reader, body, here, selector)
    # goodput: the engine counts each request good when it met every target at once.
    spec = reader.mapping(body, here, TARGETS)
    if not spec:
        raise reader.fail(here, f"expected at least one target among {', '.join(TARGETS)}")
    targets = {key: reader.number(item, (*here, key), 0, math.inf, "seconds > 0") for key, item in spec.items()}
    wanted = " and ".join(f"{key.removesuffix('_s')} <= {limit:g} s" for key, limit in targets.items())
    return _judged(kind, selector, slo_name, targets, f"share of requests missing any of: {wanted}")


def _correctness_sli(reader: FieldReader, body: Any, here: Path_, selector: tuple[Matcher, ...]) -> Sli:
    """Golden probes and data-corrupting GPU XIDs (the sidecar's counters) and requests vLLM found NaN logits in
    (the engine's): bad events are probes outside the tolerance, every corrupted request and every such XID.
    Two processes that die apart, so their rates are joined as availability's probes are
    (EventSum.separate_sources)."""
    reader.mapping(body if body is not None else {}, here, ())  # nothing to set yet: the `correctness` section
    probes = Selection(GOLDEN_PROBES, selector)
    bad = Selection(GOLDEN_PROBES, (*selector, Matcher("result", "=", "bad")))
    corrupted = (1, Selection(CORRUPTED_REQUESTS, selector))
    xids = (1, Selection(GPU_CORRUPTING_XIDS, selector))
    return Sli("correctness", EventSum(((1, bad), corrupted, xids), separate_sources=True),
               EventSum(((1, probes), corrupted, xids), separate_sources=True),
               "share of golden probes that moved beyond the tolerance of their baseline, of requests whose "
               "logits were NaN, and of data-corrupting XID events on the pod's GPUs")


LATENCY_FIELDS = ("measure", "threshold_s", "source", "histogram", "matchers", "buckets")
SOURCES = ("exact", "histogram")


def _parse_timeslices(reader: FieldReader, body: Any, here: Path_, selector: tuple[Matcher, ...]) -> Sli:
    """A time-slice SLI: `slice` (1m), `good` (the slice's condition, like ">= 0.8"), `no_data` (bad), and the
    value: one of `gauge` ({metric, matchers, aggregate}), `ratio` ({errors, total}) or `quantile`
    ({q, measure or histogram, matchers})."""
    spec = reader.mapping(body, here, TIMESLICE_FIELDS, required=("good",))
    text = spec.get("slice", "1m")
    slice_s = duration_seconds(text) if isinstance(text, str) else None
    if slice_s is None or not SLICE_BOUNDS_S[0] <= slice_s <= SLICE_BOUNDS_S[1]:
        raise reader.fail((*here, "slice"), f"expected a duration from {SLICE_BOUNDS_S[0]}s to "
                                            f"{duration_label(SLICE_BOUNDS_S[1])}, like 1m, got {text!r}")
    good = spec["good"]
    match = re.fullmatch(r"\s*(>=|>|<=|<)\s*(\S+)\s*", good) if isinstance(good, str) else None
    try:
        op, bound = (match[1], float(match[2])) if match else ("", math.nan)
    except ValueError:
        op, bound = "", math.nan
    if op not in SLICE_OPS or not math.isfinite(bound):
        raise reader.fail((*here, "good"), f"expected a comparison and a number, like \">= 0.8\" (one of "
                                           f"{', '.join(SLICE_OPS)}), got {good!r}")
    measures = [m for m in SLICE_MEASURES if m in spec]
    if len(measures) != 1:
        raise reader.fail(here, f"expected exactly one of {', '.join(SLICE_MEASURES)}: the slice's value")
    measure = measures[0]
    # A gauge that stops reporting is a fault (bad); a ratio or a quantile with no requests has nothing to
    # judge (left out), as has a counter's first slice.
    no_data = spec.get("no_data", "bad" if measure == "gauge" else "excluded")
    if no_data not in NO_DATA:
        raise reader.fail((*here, "no_data"), f"expected one of {', '.join(NO_DATA)}, got {no_data!r}")
    at = (*here, measure)
    common = {"slice_s": slice_s, "measure": measure, "op": op, "bound": bound, "no_data": no_data}
    if measure == "gauge":
        gauge = reader.mapping(spec[measure], at, ("metric", "matchers", "aggregate"), required=("metric",))
        aggregate = gauge.pop("aggregate", "avg")
        if aggregate not in SLICE_AGGREGATES:
            raise reader.fail((*at, "aggregate"), f"expected one of {', '.join(SLICE_AGGREGATES)}, got {aggregate!r}")
        source = _parse_selection(reader, gauge, at, selector)
        sli = Timeslices(source=source, aggregate=aggregate, **common)
        what = f"{aggregate} of {source.metric}"
    elif measure == "ratio":
        ratio = reader.mapping(spec[measure], at, ("errors", "total"), required=("errors", "total"))
        errors = _parse_selection(reader, ratio["errors"], (*at, "errors"), selector)
        total = _parse_selection(reader, ratio["total"], (*at, "total"), selector)
        sli = Timeslices(source=total, errors=EventSum(((1, errors),)), total=EventSum(((1, total),)), **common)
        what = f"share of {total.metric} that are {errors.promql()}"
    else:
        quantile = reader.mapping(spec[measure], at, ("q", "measure", "histogram", "matchers"), required=("q",))
        q = reader.number(quantile["q"], (*at, "q"), 0, 1, "a quantile in (0, 1), like 0.99")
        named = quantile.get("measure")
        if named is not None and named not in MEASURE_HISTOGRAMS:
            raise reader.fail((*at, "measure"), f"expected one of {', '.join(MEASURE_HISTOGRAMS)}, got {named!r}")
        if (named is None) == ("histogram" not in quantile):
            raise reader.fail(at, f"expected `measure` (one of {', '.join(MEASURE_HISTOGRAMS)}) or a `histogram`")
        histogram = MEASURE_HISTOGRAMS[named] if named else reader.string(quantile["histogram"], (*at, "histogram"))
        matchers = reader.matchers(quantile["matchers"], (*at, "matchers")) if "matchers" in quantile else ()
        sli = Timeslices(source=Selection(histogram + "_bucket", selector + matchers), quantile=q, **common)
        what = f"p{q * 100:g} of {histogram}"
    return Sli("timeslices", None, None, f"share of {duration_label(slice_s)} slices whose {what} was not "
                                         f"{sli.condition}", timeslices=sli)


def _parse_latency(reader: FieldReader, body: Any, here: Path_, slo_name: str, selector: tuple[Matcher, ...]) -> Sli:
    """`measure` + `threshold_s`: the engine's exact judgement of every request (any threshold). With
    `source: histogram` (the default when only `histogram` is named, for a server that does not judge),
    bucket counts, and the threshold must be a bucket bound."""
    spec = reader.mapping(body, here, LATENCY_FIELDS, required=("threshold_s",))
    measure = spec.get("measure")
    if measure is not None and measure not in MEASURES:
        raise reader.fail((*here, "measure"), f"expected one of {', '.join(MEASURES)}, got {measure!r}")
    if measure is None and "histogram" not in spec:
        raise reader.fail(here, f"expected `measure` (one of {', '.join(MEASURES)}), or a `histogram`")
    source = spec.get("source", "exact" if measure is not None and "histogram" not in spec else "histogram")
    if source not in SOURCES:
        raise reader.fail((*here, "source"), f"expected one of {', '.join(SOURCES)}, got {source!r}")
    threshold = reader.number(spec["threshold_s"], (*here, "threshold_s"), 0, math.inf, "seconds > 0")
    matchers = selector + (reader.matchers(spec["matchers"], (*here, "matchers")) if "matchers" in spec else ())
    if source == "exact":
        if measure is None:
            raise reader.fail(here, f"source: exact needs `measure` (one of {', '.join(MEASURES)})")
        for key in ("histogram", "buckets"):
            if key in spec:
                raise reader.fail((*here, key), "only with source: histogram; the engine's exact counts need none")
        return _judged("latency", matchers, slo_name, {f"{measure}_s": threshold},
                       f"share of requests whose {measure} exceeded {threshold:g} s, or that failed",
                       histogram=MEASURE_HISTOGRAMS[measure], threshold_s=threshold, source="exact")
    histogram = reader.string(spec.get("histogram", MEASURE_HISTOGRAMS.get(measure or "")), (*here, "histogram"))
    buckets = _buckets(reader, spec, here, histogram)
    if threshold not in buckets:
        raise reader.fail((*here, "threshold_s"), (
            f"{threshold:g} s is not a bucket boundary of {histogram}, so no tool can count requests "
            f"at or under it exactly; its boundaries are {', '.join(f'{b:g}' for b in buckets)} "
            "(or judge it exactly: `measure` with source: exact)"))
    count = Selection(histogram + "_count", matchers)
    within = Selection(histogram + "_bucket", (*matchers, le_matcher(threshold)))
    return Sli("latency", EventSum(((1, count), (-1, within))), EventSum(((1, count),)),
               f"share of requests slower than {threshold:g} s by {histogram}", histogram=histogram,
               threshold_s=threshold, source="histogram")


def _judged(kind: str, matchers: tuple[Matcher, ...], slo_name: str, targets: dict[str, float], description: str,
            **extra: Any) -> Sli:
    """An SLI on the engine's per-request judgement: SLO_COUNTER{slo=<name>}, bad when good="false"."""
    base = (*matchers, Matcher("slo", "=", slo_name))
    total = Selection(SLO_COUNTER, base)
    bad = Selection(SLO_COUNTER, (*base, Matcher("good", "=", "false")))
    return Sli(kind, EventSum(((1, bad),)), EventSum(((1, total),)), description, targets=targets, **extra)


def _buckets(reader: FieldReader, spec: dict, here: Path_, histogram: str) -> tuple[float, ...]:
    if "buckets" in spec:
        given = spec["buckets"]
        if not isinstance(given, list) or not given or not all(
                isinstance(b, (int, float)) and not isinstance(b, bool) for b in given):
            raise reader.fail((*here, "buckets"), "expected a non-empty list of bucket upper bounds in seconds")
        return tuple(float(b) for b in given)
    if histogram not in KNOWN_BUCKETS:
        raise reader.fail((*here, "histogram"), (
            f"unknown histogram {histogram!r}: give its bucket bounds in `buckets`, or use one of "
            f"{', '.join(KNOWN_BUCKETS)}"))
    return KNOWN_BUCKETS[histogram]


def _parse_selection(reader: FieldReader, value: Any, path: Path_, selector: tuple[Matcher, ...]) -> Selection:
    spec = reader.mapping(value, path, ("metric", "matchers"), required=("metric",))
    metric = reader.string(spec["metric"], (*path, "metric"))
    if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", metric):
        raise reader.fail((*path, "metric"), f"not a valid Prometheus metric name: {metric!r}")
    matchers = reader.matchers(spec["matchers"], (*path, "matchers")) if "matchers" in spec else ()
    return Selection(metric, selector + matchers)
