"""The SLO spec: one YAML file that the sidecar, the rule generator and the dashboards all read.

Pure code: `parse_spec(text, source)` gives a `Spec` or raises SpecError naming
the file, line, field and reason. Every SLI is reduced to the same shape, error
events over total events, each a signed sum of counter selections, so the
sidecar (from scraped samples) and Prometheus (from PromQL) compute the same
ratio. See slo.schema.json for the schema and README.md for the defaults.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.utils import floatToGoString

from .yaml_tree import Located, Path_, YamlError, dotted, load

SPEC_VERSION = "slo-sidecar/v1"
DEFAULT_SPEC = Path(__file__).resolve().parent / "slo.yaml"  # the embedded default
DAY = 86_400
PERIODS = {"7d": 7 * DAY, "14d": 14 * DAY, "28d": 28 * DAY, "30d": 30 * DAY}

# The SRE Workbook's multi-window, multi-burn-rate alerts for a 30-day period:
# (tier, long window s, short window s, burn factor). Windows scale with the period,
# so each alert still fires on the same share of the budget spent (2%, 5%, 10%, 10%).
BURN_ALERTS_30D = (
    ("page", 3600, 300, 14.4),
    ("page", 6 * 3600, 1800, 6.0),
    ("ticket", DAY, 2 * 3600, 3.0),
    ("ticket", 3 * DAY, 6 * 3600, 1.0),
)

HTTP_DURATION_HISTOGRAM = "slo_engine_http_request_duration_seconds"  # the engine's; exemplars carry trace ids

# Bucket bounds of the histograms an SLI can use, as the engine exposes them. A latency
# threshold must be one of them: between two bounds, every tool silently interpolates.
KNOWN_BUCKETS: dict[str, tuple[float, ...]] = {
    "vllm:time_to_first_token_seconds": (
        0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
        80.0, 160.0, 640.0, 2560.0),
    "vllm:inter_token_latency_seconds": (
        0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0),
    "vllm:e2e_request_latency_seconds": (
        0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
        960.0, 1920.0, 7680.0),
    "vllm:request_queue_time_seconds": (
        0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
        960.0, 1920.0, 7680.0),
    # The engine's own HTTP histogram (engine/metrics.py uses this tuple).
    HTTP_DURATION_HISTOGRAM: (
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0),
}
HTTP_DURATION_BUCKETS = KNOWN_BUCKETS[HTTP_DURATION_HISTOGRAM]

# What the engine counts per request for a goodput SLO, and the latencies a goodput target may bound.
GOODPUT_COUNTER = "slo_engine_goodput_requests_total"
GOODPUT_TARGETS = ("ttft_s", "inter_token_s", "e2e_s")


class SpecError(YamlError):
    """A spec that cannot be used: the command prints it and exits 2."""


# --- small pieces ---------------------------------------------------------------------------------

_MATCHER = re.compile(r'^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*$')


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str  # =, !=, =~, !~
    value: str

    @classmethod
    def parse(cls, text: str) -> "Matcher":
        match = _MATCHER.match(text) if isinstance(text, str) else None
        if match is None:
            raise ValueError(f'expected a label matcher like code=~"5..", got {text!r}')
        label, op, raw = match.groups()
        value = re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), raw)
        if op in ("=~", "!~"):
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression in {text!r}: {exc}") from None
        return cls(label, op, value)

    def promql(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'{self.label}{self.op}"{escaped}"'

    def matches(self, labels: dict[str, str]) -> bool:
        """As Prometheus matches: a missing label is the empty string; regexes are anchored."""
        value = labels.get(self.label, "")
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        found = re.fullmatch(self.value, value) is not None
        return found if self.op == "=~" else not found


@dataclass(frozen=True)
class Selection:
    """One counter's series, selected by matchers: `metric{matchers}`."""

    metric: str
    matchers: tuple[Matcher, ...] = ()

    def promql(self) -> str:
        return self.metric + ("{" + ",".join(m.promql() for m in self.matchers) + "}" if self.matchers else "")

    def matches(self, labels: dict[str, str]) -> bool:
        """Whether a series of `metric` with these labels is selected."""
        return all(matcher.matches(labels) for matcher in self.matchers)


@dataclass(frozen=True)
class EventSum:
    """A signed sum of counter selections: latency errors are `count - bucket{le=threshold}`."""

    terms: tuple[tuple[int, Selection], ...]

    def rate_promql(self, window: str) -> str:
        text = ""
        for sign, selection in self.terms:
            term = f"sum(rate({selection.promql()}[{window}]))"
            text = term if not text else f"{text} {'+' if sign > 0 else '-'} {term}"
        return text if len(self.terms) == 1 else f"({text})"


@dataclass(frozen=True)
class Sli:
    kind: str  # availability, latency, goodput, events, raw
    errors: EventSum | None  # None for raw (PromQL only) SLIs
    total: EventSum | None
    description: str  # one line, for docs and dashboards
    raw_error_ratio: str | None = None  # Sloth `raw`: a PromQL ratio with {{.window}}
    raw_errors: str | None = None  # Sloth `events`: PromQL with {{.window}}
    raw_total: str | None = None
    goodput_targets: dict[str, float] = field(default_factory=dict)
    histogram: str | None = None  # latency SLIs: the histogram and the threshold, for dashboards
    threshold_s: float | None = None

    @property
    def sidecar_can_evaluate(self) -> bool:
        return self.errors is not None and self.total is not None


@dataclass(frozen=True)
class AlertTier:
    enabled: bool
    severity: str
    labels: dict[str, str]
    annotations: dict[str, str]


@dataclass(frozen=True)
class BurnAlert:
    tier: str  # page or ticket
    long_s: int
    short_s: int
    factor: float


@dataclass(frozen=True)
class Slo:
    name: str
    description: str
    objective: float  # percent, e.g. 99.9
    period: str  # e.g. 30d
    sli: Sli
    labels: dict[str, str]
    alert_name: str
    min_events: int  # fewer events than this in an alert's long window: no alert
    page: AlertTier
    ticket: AlertTier

    @property
    def objective_ratio(self) -> float:
        return round(self.objective / 100, 12)

    @property
    def error_budget(self) -> float:
        return round(1 - self.objective / 100, 12)

    @property
    def period_s(self) -> int:
        return PERIODS[self.period]

    def burn_alerts(self) -> list[BurnAlert]:
        scale = self.period_s / PERIODS["30d"]
        return [BurnAlert(tier, _round_minutes(long * scale), _round_minutes(short * scale), factor)
                for tier, long, short, factor in BURN_ALERTS_30D]

    def windows(self) -> list[int]:
        """Every window reported, shortest first: the alerts' windows and the period."""
        return sorted({*(w for a in self.burn_alerts() for w in (a.long_s, a.short_s)), self.period_s})


@dataclass(frozen=True)
class Operational:
    """Thresholds of the operational alerts (reference design: targets and alert thresholds)."""

    latency_p99_alert_s: float = 1.0
    error_ratio_alert: float = 0.01
    queue_depth_alert: float = 500
    gpu_utilization_low: float = 0.5
    gpu_memory_high_ratio: float = 0.95
    kv_cache_high_ratio: float = 0.95
    gpu_temperature_high_celsius: float = 85
    preemptions_per_second_alert: float = 0.1


@dataclass(frozen=True)
class Spec:
    service: str
    labels: dict[str, str]
    slos: tuple[Slo, ...]
    operational: Operational
    runbook_base_url: str
    source: str
    grafana_url: str = ""  # prefix of the alerts' dashboard links (empty: links relative to Grafana)
    format: str = SPEC_VERSION  # or "prometheus/v1" for a Sloth spec


DURATION_UNITS = {"d": DAY, "h": 3600, "m": 60, "s": 1}  # largest first
_DURATION = re.compile(r"^(\d+)([dhms])$")


def duration_label(seconds: int) -> str:
    """5m, 1h, 1d, 30d: the largest unit that divides exactly."""
    return next(f"{seconds // size}{unit}" for unit, size in DURATION_UNITS.items() if seconds % size == 0)


def duration_seconds(text: str) -> int | None:
    """The inverse of duration_label ("15m" -> 900); None for anything else."""
    match = _DURATION.match(text)
    return int(match[1]) * DURATION_UNITS[match[2]] if match else None


def _round_minutes(seconds: float) -> int:
    return max(60, int(round(seconds / 60)) * 60)


def le_matcher(bound: float) -> Matcher:
    """Matches the bucket whichever way `le` is written: prometheus_client (and so vLLM) writes 10.0,
    Prometheus 3 normalises classic-histogram `le` values on ingestion to 10."""
    forms = sorted({floatToGoString(bound), f"{bound:.17g}"}, key=len, reverse=True)
    if len(forms) == 1:
        return Matcher("le", "=", forms[0])
    return Matcher("le", "=~", "|".join(re.escape(form) for form in forms))


# --- parsing ----------------------------------------------------------------------------------------

TOP_FIELDS = ("version", "service", "labels", "runbook_base_url", "grafana_url", "operational", "slos")
SLO_FIELDS = ("name", "description", "objective", "period", "selector", "labels", "sli", "alerting")
ALERTING_FIELDS = ("name", "labels", "annotations", "min_events", "page", "ticket")
TIER_FIELDS = ("enabled", "severity", "labels", "annotations")
SLI_KINDS = ("availability", "latency", "goodput")
DEFAULT_SEVERITY = {"page": "critical", "ticket": "warning"}
DEFAULT_MIN_EVENTS = 20
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


class _Reader:
    """Walks the located document, raising SpecError at the first problem."""

    def __init__(self, doc: Located):
        self.doc = doc

    def fail(self, path: Path_, reason: str) -> SpecError:
        return SpecError(self.doc.where(path), dotted(path) or "(file)", reason)

    def mapping(self, value: Any, path: Path_, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping with {', '.join(allowed)}")
        for key in value:
            if key not in allowed:
                raise self.fail((*path, key), f"unknown field; expected one of {', '.join(allowed)}")
        for key in required:
            if key not in value:
                raise self.fail(path, f"missing field {key!r}")
        return value

    def string(self, value: Any, path: Path_) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, f"expected a non-empty string, got {value!r}")
        return value

    def labels(self, value: Any, path: Path_) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, "expected a mapping of label: value")
        for key, item in value.items():
            if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", str(key)):
                raise self.fail((*path, key), "not a valid Prometheus label name")
            if not isinstance(item, (str, int, float)) or isinstance(item, bool):
                raise self.fail((*path, key), f"expected a string, got {item!r}")
        return {str(k): str(v) for k, v in value.items()}

    def matchers(self, value: Any, path: Path_) -> tuple[Matcher, ...]:
        if not isinstance(value, list):
            raise self.fail(path, 'expected a list of label matchers like code=~"5.."')
        if not value:
            raise self.fail(path, "empty selector: leave the field out to select every series")
        found = []
        for i, text in enumerate(value):
            try:
                found.append(Matcher.parse(text))
            except ValueError as exc:
                raise self.fail((*path, i), str(exc)) from None
        return tuple(found)

    def number(self, value: Any, path: Path_, low: float, high: float, what: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value < high:
            raise self.fail(path, f"expected {what}, got {value!r}")
        return float(value)


def parse_spec(text: str, source: str) -> Spec:
    try:
        doc = load(text, source)
    except YamlError as exc:
        raise SpecError(exc.where, exc.field, exc.reason) from None
    if isinstance(doc.value, dict) and doc.value.get("version") == "prometheus/v1":
        from .sloth import parse_sloth

        return parse_sloth(doc)
    reader = _Reader(doc)
    top = reader.mapping(doc.value, (), TOP_FIELDS, required=("version", "service", "slos"))
    if top["version"] != SPEC_VERSION:
        raise reader.fail(("version",), f"expected {SPEC_VERSION!r} (or Sloth's 'prometheus/v1'), "
                                        f"got {top['version']!r}")
    service = reader.string(top["service"], ("service",))
    labels = reader.labels(top.get("labels"), ("labels",))
    if not isinstance(top["slos"], list) or not top["slos"]:
        raise reader.fail(("slos",), "expected a non-empty list of SLOs")
    slos = [_parse_slo(reader, item, ("slos", i)) for i, item in enumerate(top["slos"])]
    names = [slo.name for slo in slos]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise reader.fail(("slos", i, "name"), f"duplicate SLO name {name!r}")
    return Spec(service, labels, tuple(slos), _parse_operational(reader, top.get("operational")),
                str(top.get("runbook_base_url", "docs/runbooks/")), source,
                grafana_url=str(top.get("grafana_url", "")).rstrip("/"))


def _parse_operational(reader: _Reader, value: Any) -> Operational:
    if value is None:
        return Operational()
    fields = Operational.__dataclass_fields__
    values = reader.mapping(value, ("operational",), tuple(fields))
    checked = {key: reader.number(item, ("operational", key), 0, math.inf, "a number > 0")
               for key, item in values.items()}
    return Operational(**checked)


def _parse_slo(reader: _Reader, value: Any, path: Path_) -> Slo:
    slo = reader.mapping(value, path, SLO_FIELDS, required=("name", "objective", "sli"))
    name = reader.string(slo["name"], (*path, "name"))
    if not _NAME.match(name):
        raise reader.fail((*path, "name"), "expected lower case letters, digits, '-' and '_', starting "
                                           f"with a letter, got {name!r}")
    objective = reader.number(slo["objective"], (*path, "objective"), 0, 100,
                              "a percentage strictly between 0 and 100, like 99.9")
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
        alert_name=str(alerting.get("name") or _camel(name)), min_events=min_events,
        page=tiers["page"], ticket=tiers["ticket"])
    _check_alerts_can_fire(reader, parsed, path)
    return parsed


def _parse_tier(reader: _Reader, value: Any, path: Path_, tier: str) -> AlertTier:
    tier_spec = reader.mapping(value or {}, path, TIER_FIELDS)
    enabled = tier_spec.get("enabled", True)
    if not isinstance(enabled, bool):
        raise reader.fail((*path, "enabled"), f"expected true or false, got {enabled!r}")
    severity = reader.string(tier_spec.get("severity", DEFAULT_SEVERITY[tier]), (*path, "severity"))
    return AlertTier(enabled, severity, reader.labels(tier_spec.get("labels"), (*path, "labels")),
                     reader.labels(tier_spec.get("annotations"), (*path, "annotations")))


def _check_alerts_can_fire(reader: _Reader, slo: Slo, path: Path_) -> None:
    """A burn factor times the budget above 1 needs more than every request to fail."""
    for alert in slo.burn_alerts():
        tier: AlertTier = getattr(slo, alert.tier)
        needed = alert.factor * slo.error_budget
        if tier.enabled and needed > 1:
            raise reader.fail((*path, "objective"), (
                f"the {alert.tier} alert over {duration_label(alert.long_s)} fires at a {alert.factor:g}x burn, "
                f"an error ratio of {needed:.3g}: above 1, so it can never fire for a {slo.objective:g}% "
                f"objective; raise the objective or set alerting.{alert.tier}.enabled: false"))


def _parse_sli(reader: _Reader, value: Any, path: Path_, slo_name: str, selector: tuple[Matcher, ...]) -> Sli:
    sli = reader.mapping(value, path, SLI_KINDS)
    if len(sli) != 1:
        raise reader.fail(path, f"expected exactly one of {', '.join(SLI_KINDS)}")
    kind, body = next(iter(sli.items()))
    here = (*path, kind)
    if kind == "availability":
        spec = reader.mapping(body, here, ("errors", "total"), required=("errors", "total"))
        errors = _parse_selection(reader, spec["errors"], (*here, "errors"), selector)
        total = _parse_selection(reader, spec["total"], (*here, "total"), selector)
        return Sli(kind, EventSum(((1, errors),)), EventSum(((1, total),)),
                   f"share of {total.promql()} that are {errors.promql()}")
    if kind == "latency":
        spec = reader.mapping(body, here, ("histogram", "threshold_s", "matchers", "buckets"),
                              required=("histogram", "threshold_s"))
        histogram = reader.string(spec["histogram"], (*here, "histogram"))
        threshold = reader.number(spec["threshold_s"], (*here, "threshold_s"), 0, math.inf, "seconds > 0")
        buckets = _buckets(reader, spec, here, histogram)
        if threshold not in buckets:
            raise reader.fail((*here, "threshold_s"), (
                f"{threshold:g} s is not a bucket boundary of {histogram}, so no tool can count requests "
                f"at or under it exactly; its boundaries are {', '.join(f'{b:g}' for b in buckets)}"))
        matchers = selector + (reader.matchers(spec["matchers"], (*here, "matchers")) if "matchers" in spec else ())
        count = Selection(histogram + "_count", matchers)
        within = Selection(histogram + "_bucket", (*matchers, le_matcher(threshold)))
        return Sli(kind, EventSum(((1, count), (-1, within))), EventSum(((1, count),)),
                   f"share of requests slower than {threshold:g} s by {histogram}", histogram=histogram,
                   threshold_s=threshold)
    # goodput: the engine counts each request good when it met every target at once.
    spec = reader.mapping(body, here, GOODPUT_TARGETS)
    if not spec:
        raise reader.fail(here, f"expected at least one target among {', '.join(GOODPUT_TARGETS)}")
    targets = {key: reader.number(item, (*here, key), 0, math.inf, "seconds > 0") for key, item in spec.items()}
    base = (*selector, Matcher("slo", "=", slo_name))
    total = Selection(GOODPUT_COUNTER, base)
    bad = Selection(GOODPUT_COUNTER, (*base, Matcher("good", "=", "false")))
    wanted = " and ".join(f"{key.removesuffix('_s')} <= {limit:g} s" for key, limit in targets.items())
    return Sli(kind, EventSum(((1, bad),)), EventSum(((1, total),)),
               f"share of requests missing any of: {wanted}", goodput_targets=targets)


def _buckets(reader: _Reader, spec: dict, here: Path_, histogram: str) -> tuple[float, ...]:
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


def _parse_selection(reader: _Reader, value: Any, path: Path_, selector: tuple[Matcher, ...]) -> Selection:
    spec = reader.mapping(value, path, ("metric", "matchers"), required=("metric",))
    metric = reader.string(spec["metric"], (*path, "metric"))
    if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", metric):
        raise reader.fail((*path, "metric"), f"not a valid Prometheus metric name: {metric!r}")
    matchers = reader.matchers(spec["matchers"], (*path, "matchers")) if "matchers" in spec else ()
    return Selection(metric, selector + matchers)


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[-_]", name)) + "SLO"


def load_spec(path: str) -> Spec:
    """Read and parse a spec file; errors name the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise SpecError(path, "(file)", f"cannot read: {exc.strerror or exc}") from None
    return parse_spec(text, path)
