"""The SLO spec's model: what the sidecar, the rule generator and the dashboards all read.

Pure data and arithmetic. Every SLI is reduced to the same shape, error events
over total events, each a signed sum of counter selections, so the sidecar (from
scraped samples) and Prometheus (from PromQL) compute the same ratio. The
readers (`native`, `sloth`, front door `load`) build these from YAML.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

SPEC_VERSION = "slo-sidecar/v1"
# The labels that tell one service from another in a shared Prometheus: its namespace (a target
# label Kubernetes service discovery adds) and the served model's name (on vLLM's series and the
# engine's own). Every native SLI is summed by them: N services get N SLOs, N pods of one service one.
DEFAULT_IDENTITY = ("namespace", "model_name")
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

# A total outage pages within 90 s, sooner than the hour tier can (a 100% outage takes 52 s to
# cross 14.4x over 1h at 99.9%, then its `for:`): an alert of its own fires, with no `for:`, while
# more than half the events failed over 2 minutes and over the last minute, in at least
# FAST_MIN_EVENTS events (10 a minute: below that a few failures make half, and a quiet service's
# outage is paged by the hour tier and LLMServiceDown). For a 100% outage the 2-minute ratio passes
# 0.5 after 60 s; for a 90% one after 67 s. Windows fixed whatever the period: it is about minutes.
FAST_BURN_RATIO = 0.5
FAST_BURN_WINDOWS = (120, 60)  # long, short
FAST_MIN_EVENTS = 20

# The engine judges every generation request, once at its end, against each target of the spec's
# exact latency and goodput SLOs, and counts it here by SLO and whether it met them all.
SLO_COUNTER = "slo_engine_slo_requests_total"
# The tokens generated for requests that met every one of those targets (goodput in tokens).
GOODPUT_TOKENS = "slo_engine_goodput_tokens_total"
# The engine's series other processes read: its HTTP requests by endpoint, code and tenant; each tenant's
# prompt and generated tokens (the sidecar shares the pod's cost by them); the GPUs it can use (by UUID).
HTTP_REQUESTS = "slo_engine_http_requests_total"
PROMPT_TOKENS = "slo_engine_prompt_tokens_total"
GENERATION_TOKENS = "slo_engine_generation_tokens_total"
ACCELERATOR_INFO = "slo_engine_accelerator_info"
# 1 while the engine serves; present at all only where our middleware runs (it refuses the requests that
# would crash a LoRA engine, so the sidecar's golden probes may go there).
ENGINE_READY = "slo_engine_ready"
# The engine's tenant label on its own counters: the served name (base model or LoRA adapter), or
# "unknown" for a request refused before it named one; a sliced SLO's slices are its values, and every
# value the spec does not name is judged in one more slice, OTHER_SLICE.
TENANT_LABEL = "model"
OTHER_SLICE = "other"
# The endpoints that generate, whose requests the SLOs judge (the engine counts every endpoint).
GENERATION_ENDPOINTS = ("/v1/completions", "/v1/chat/completions")
# The per-request latencies a target may bound: time to first token, time per output token
# after the first ((e2e - ttft) / (tokens - 1), as vLLM and the OpenTelemetry GenAI conventions
# define it), end to end, and time in vLLM's queue. A target is written `<measure>_s`.
MEASURES = ("ttft", "tpot", "e2e", "queue")
TARGETS = tuple(f"{measure}_s" for measure in MEASURES)

# The sidecar sends its engine a minimal real request every probe interval, marked with this header
# (honoured from loopback only) so the engine leaves it out of its own request and SLO counters.
PROBE_HEADER = "X-SLO-Probe"
# Probes by result: success, error (the engine answered with a failure: users' requests fail and are
# counted by the engine too) or unanswered (no answer, a timeout, or an engine not ready).
PROBE_COUNTER = "slo_probe_requests_total"
# What users lost while the engine did not answer, which no server can count: each unanswered probe
# stands for the requests one probe interval held at the service's recent rate (at least one).
# Availability SLIs add it to both errors and total, so a dead engine burns the budget.
PROBE_MISSED = "slo_probe_missed_requests_total"
# Golden probes (spec/golden.py) by result: good (the item scored within tolerance of its baseline) or bad.
# A probe without an answer is availability's business and is not counted here.
GOLDEN_PROBES = "slo_golden_probes_total"
GOLDEN_BAD_IN_A_ROW = "slo_golden_bad_in_a_row"  # bad golden probes since the last good one (the fast page's)
# XID events of the kinds NVIDIA's XID catalogue says corrupt data, on the pod's own GPUs, by XID: 48 (double-bit
# ECC error), 64 (ECC page retirement or row remapping failed), 94 (contained ECC error) and 95 (uncontained ECC
# error). https://docs.nvidia.com/deploy/xid-errors/ ; docs/correctness.md says why these and not others.
GPU_CORRUPTING_XIDS = "slo_gpu_data_corrupting_xids_total"
# The mean utilisation of the GPUs the sidecar reports (the pod's own), 0-1, with the service's identity labels
# (the GPU series' own `model_name` is the GPU's product): what a time-slice SLO on GPU utilisation reads.
GPU_UTILIZATION = "slo_gpu_utilization_ratio"
DATA_CORRUPTING_XIDS = (48, 64, 94, 95)
# Requests whose logits vLLM found NaN (counted with VLLM_COMPUTE_NANS_IN_LOGITS=1, which our engine sets).
CORRUPTED_REQUESTS = "vllm:corrupted_requests_total"


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


# One scrape's samples by sample name: [(labels, value)], as a reader of an exposition hands them over.
Scrape = dict[str, list[tuple[dict[str, str], float]]]


def counter_increase(previous: float, value: float, restarted: bool = False) -> float:
    """One counter series' increase from `previous` to `value`, by Prometheus's reset rule: a counter that
    went down (or whose process restarted) began again at 0, so the increase is the new value. The one
    copy of the rule for the tracker's series and the gate's scrapes (the sidecar's vectors keep offsets,
    sidecar/rates.py, to the same effect)."""
    return value if restarted or value < previous else value - previous


@dataclass(frozen=True)
class EventSum:
    """A signed sum of counter selections: latency errors are `count - bucket{le=threshold}`.

    With `separate_sources`, the (positive) terms come from processes that die apart (the engine's
    counters and its sidecar's probe counter), and PromQL's `+` would drop a service whose series
    are missing on either side. So their rates are joined with `or` inside one sum: each term after
    the first gets a label of its own (`slo_source`), so that no series of one can hide another's
    with the same labels, and a missing term adds nothing. Two rate() per window, not four.
    """

    terms: tuple[tuple[int, Selection], ...]
    separate_sources: bool = False

    def __post_init__(self) -> None:
        if self.separate_sources and any(sign < 0 for sign, _ in self.terms):
            raise ValueError("terms from separate sources are summed: none can be subtracted")

    def rate_promql(self, window: str, by: tuple[str, ...] = ()) -> str:
        """The events per second over the window, summed per service (`by` its identity labels)."""
        grouping = f" by ({', '.join(by)}) " if by else ""
        if self.separate_sources:
            joined = " or ".join(
                f"rate({selection.promql()}[{window}])" if i == 0 else
                f'label_replace(rate({selection.promql()}[{window}]), "slo_source", "{i}", "", "")'
                for i, (_, selection) in enumerate(self.terms))
            return f"sum{grouping}({joined})"
        rates = [f"sum{grouping}(rate({selection.promql()}[{window}]))" for _, selection in self.terms]
        if len(rates) == 1:
            return rates[0]
        text = rates[0]
        for (sign, _), rate in zip(self.terms[1:], rates[1:]):
            text = f"{text} {'+' if sign > 0 else '-'} {rate}"
        return f"({text})"

    def increase(self, start: "Scrape", end: "Scrape") -> float:
        """The events between two scrapes of the same process, as PromQL's increase() counts them: per
        series, end - start, or end alone where the counter went down (a restart began it again at 0);
        a series new at the end counts from 0."""
        total = 0.0
        for sign, selection in self.terms:
            before = {frozenset(labels.items()): value for labels, value in start.get(selection.metric, ())
                      if selection.matches(labels)}
            for labels, value in end.get(selection.metric, ()):
                if selection.matches(labels):
                    total += sign * counter_increase(before.get(frozenset(labels.items()), 0.0), value)
        return total

    def narrowed(self, *matchers: Matcher) -> "EventSum":
        """The same sum on the series the extra matchers also select (a tenant's, a canary's pods); a matcher a
        selection already has is not repeated."""
        return replace(self, terms=tuple(
            (sign, Selection(selection.metric,
                             (*selection.matchers, *(m for m in matchers if m not in selection.matchers))))
            for sign, selection in self.terms))

    def first_source(self) -> "EventSum":
        """The first source's term alone (the sum as one process serves it, the others absent); the sum
        itself where its terms are one source's."""
        return EventSum(self.terms[:1]) if self.separate_sources else self

    def without(self, metric: str) -> "EventSum":
        """The same sum less the terms on `metric` (the engine's own view, without the probes)."""
        return EventSum(tuple(term for term in self.terms if term[1].metric != metric))

    def unsliced(self, labels: tuple[str, ...]) -> "EventSum":
        """The same sum with no matcher on `labels` (a slice's tenant label): every tenant's events."""
        return replace(self, terms=tuple(
            (sign, Selection(selection.metric, tuple(m for m in selection.matchers if m.label not in labels)))
            for sign, selection in self.terms))


TIMESLICE_GOOD = "slo:timeslice_good:bool"  # the rules' verdict on each slice of a time-slice SLI: 1 good, 0 bad
SLICE_OPS = (">=", ">", "<=", "<")
NO_DATA = ("bad", "excluded")
SLICE_AGGREGATES = ("avg", "min", "max")
NO_DATA_LOOKBACK = "1h"  # a series seen this recently and silent now: a slice with no data (docs/slos.md)


@dataclass(frozen=True)
class Timeslices:
    """A time-slice SLI: each slice of `slice_s` is good when its value `op` `bound`; the SLO's objective is the
    share of good slices. The value is a gauge aggregated over the slice (and over its series), a ratio of
    event rates, or a quantile of a histogram. A slice with no value is bad or left out (`no_data`)."""

    slice_s: int
    measure: str  # gauge, ratio or quantile
    op: str  # SLICE_OPS
    bound: float
    no_data: str  # NO_DATA
    source: Selection  # the gauge; the ratio's total (its first term); the histogram's _bucket series
    aggregate: str = "avg"  # gauge: across its series and over the slice
    errors: "EventSum | None" = None  # ratio
    total: "EventSum | None" = None
    quantile: float = 0.99  # quantile

    @property
    def condition(self) -> str:
        return f"{self.op} {self.bound:g}"

    def value_promql(self, by: tuple[str, ...]) -> str:
        """The slice's value, per service (`by`): NaN where a ratio or a quantile has no events."""
        window = duration_label(self.slice_s)
        grouping = f" by ({', '.join(by)})" if by else ""
        if self.measure == "gauge":
            return f"{self.aggregate}{grouping} ({self.aggregate}_over_time({self.source.promql()}[{window}]))"
        if self.measure == "ratio":
            assert self.errors is not None and self.total is not None
            return f"({self.errors.rate_promql(window, by)}\n/\n{self.total.rate_promql(window, by)})"
        return (f"histogram_quantile({self.quantile:g}, sum by ({', '.join((*by, 'le'))}) "
                f"(rate({self.source.promql()}[{window}])))")

    def verdict_promql(self, by: tuple[str, ...]) -> str:
        """1 for a good slice, 0 for a bad one; where the value is NaN or absent, 0 (no_data: bad, for a
        service whose source was seen within NO_DATA_LOOKBACK) or nothing (excluded)."""
        value = self.value_promql(by)
        judged = f"({value}) {self.op} bool {self.bound:g}"
        if self.no_data == "excluded":
            return f"{judged}\nunless\n(({value}) != ({value}))"
        grouping = f" by ({', '.join(by)})" if by else ""
        return (f"{judged}\nor\n0 * group{grouping} (last_over_time({self.source.promql()}"
                f"[{NO_DATA_LOOKBACK}]))")


@dataclass(frozen=True)
class Sli:
    kind: str  # availability, latency, goodput, events, raw
    errors: EventSum | None  # None for raw (PromQL only) SLIs
    total: EventSum | None
    description: str  # one line, for docs and dashboards
    raw_error_ratio: str | None = None  # Sloth `raw`: a PromQL ratio with {{.window}}
    raw_errors: str | None = None  # Sloth `events`: PromQL with {{.window}}
    raw_total: str | None = None
    targets: dict[str, float] = field(default_factory=dict)  # what the engine judges per request (SLO_COUNTER)
    histogram: str | None = None  # latency SLIs: the histogram and the threshold, for dashboards
    threshold_s: float | None = None
    source: str = ""  # latency SLIs: "exact" (the engine's judgement) or "histogram" (bucket counts)
    timeslices: Timeslices | None = None  # a time-slice SLI (kind "timeslices"): the rules judge its slices

    @property
    def golden_probes(self) -> Selection:
        """A correctness SLI's golden-probe selection (its scope's matchers, no `result`)."""
        assert self.total is not None
        return next(selection for _, selection in self.total.terms if selection.metric == GOLDEN_PROBES)

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
class ReleasePolicy:
    """The error-budget policy of one SLO: releases freeze while less than `freeze_below_budget` of the period's
    budget is left, or (where set) while its burn over the fastest page's long window is above
    `freeze_above_burn`."""

    freeze_below_budget: float
    freeze_above_burn: float | None = None


# The release policy's recordings: per SLO, whether it freezes releases (1) and why; per service, whether
# releases may go (1) or not (0), with the first reason that froze them (RELEASE_REASONS, in that order).
RELEASE_FROZEN = "slo:release_frozen:bool"
RELEASE_ALLOWED = "slo:release_allowed"
RELEASE_REASONS = ("budget", "burn")
RELEASE_ALLOWED_REASON = "none"


@dataclass(frozen=True)
class BurnAlert:
    tier: str  # page or ticket
    long_s: int
    short_s: int
    factor: float
    min_events: int  # fewer events than this in the long window: no alert (see event_guard)


@dataclass(frozen=True)
class Slo:
    name: str
    description: str
    objective: float  # percent, e.g. 99.9
    period: str  # e.g. 30d
    sli: Sli
    labels: dict[str, str]
    alert_name: str
    min_events: int  # the spec's floor for every alert's event guard (0: the derived guard alone)
    page: AlertTier
    ticket: AlertTier
    # A slice of a sliced SLO (`slice_by`): the label and value whose events it judges, e.g.
    # {"model": "medical"}; {"model": "other"} for every value the spec does not name. Empty: unsliced.
    slice: dict[str, str] = field(default_factory=dict)
    policy: ReleasePolicy | None = None  # None: this SLO never holds releases back

    @property
    def key(self) -> str:
        """Unique among the spec's SLOs: the name, and the slice's value for a slice ("ttft/medical")."""
        return "/".join((self.name, *self.slice.values()))

    @property
    def objective_ratio(self) -> float:
        return round(self.objective / 100, 12)

    @property
    def error_budget(self) -> float:
        return round(1 - self.objective / 100, 12)

    @property
    def period_s(self) -> int:
        return PERIODS[self.period]

    def events_needed(self, factor: float) -> int:
        """The fewest events a window needs before a burn over `factor` may be judged (event_guard), at least
        the spec's min_events: the alerts' guard, and a canary check's."""
        return max(self.min_events, event_guard(factor, self.error_budget))

    def burn_alerts(self) -> list[BurnAlert]:
        scale = self.period_s / PERIODS["30d"]
        return [BurnAlert(tier, _round_minutes(long * scale), _round_minutes(short * scale), factor,
                          self.events_needed(factor))
                for tier, long, short, factor in BURN_ALERTS_30D]

    @property
    def policy_burn_window_s(self) -> int:
        """The window of the release policy's burn: the fastest page's long window (1h for 30 days)."""
        return min(alert.long_s for alert in self.burn_alerts() if alert.tier == "page")

    def fast_burn(self) -> BurnAlert | None:
        """The total-outage page (see FAST_BURN_RATIO); None where half the events failing is within budget."""
        if FAST_BURN_RATIO <= self.error_budget:
            return None
        factor = FAST_BURN_RATIO / self.error_budget
        return BurnAlert("page", *FAST_BURN_WINDOWS, factor, max(FAST_MIN_EVENTS, self.events_needed(factor)))

    @property
    def base_window_s(self) -> int:
        """The burn tiers' shortest window: "burn now" on dashboards, and the step the period is summed in."""
        return min(a.short_s for a in self.burn_alerts())

    def windows(self) -> list[int]:
        """Every window reported, shortest first: the alerts' windows and the period."""
        fast = self.fast_burn()
        return sorted({*(w for a in self.burn_alerts() for w in (a.long_s, a.short_s)), self.period_s,
                       *((fast.long_s, fast.short_s) if fast else ())})


@dataclass(frozen=True)
class Correctness:
    """The golden probes' settings (spec/golden.py; docs/correctness.md says how the tolerance was chosen)."""

    golden_set: str | None = None  # a YAML file of {prompt, continuation} items; None: the embedded model's
    tolerance: float = 0.001  # nats per token: an item whose mean log-probability moved further is wrong
    interval_s: float = 10.0  # between the sidecar's golden probes, one item each, in turn
    bad_in_a_row: int = 2  # bad probes in a row that quarantine the pod (and page at once)
    quarantine: bool = False  # the sidecar's readiness fails while the last bad_in_a_row probes were bad


@dataclass(frozen=True)
class Operational:
    """Thresholds of the operational alerts (reference design: targets and alert thresholds).

    Each can fire on a real engine: queue depth is a share of the waiting requests the engine
    admits (an absolute count above its admission limit never could), and GPU memory is not
    alerted on at all (vLLM takes its configured share on purpose): KV-cache pressure and
    preemptions say when memory runs short.
    """

    latency_p99_alert_s: float = 1.0
    error_ratio_alert: float = 0.01  # of the availability SLO's events; a ticket, never a page
    queue_full_ratio_alert: float = 0.8  # waiting requests over the engine's admitted waiting capacity
    gpu_utilization_low: float = 0.5
    kv_cache_high_ratio: float = 0.95
    gpu_temperature_high_celsius: float = 85
    preemptions_per_second_alert: float = 0.1


@dataclass(frozen=True)
class Spec:
    service: str
    labels: dict[str, str]
    slos: tuple[Slo, ...]
    operational: Operational | None  # None: no operational alerts (the spec has no `operational` section)
    runbook_base_url: str
    source: str
    grafana_url: str = ""  # prefix of the alerts' dashboard links (empty: links relative to Grafana)
    format: str = SPEC_VERSION  # or "prometheus/v1" for a Sloth spec
    identity: tuple[str, ...] = DEFAULT_IDENTITY  # () for a Sloth spec: its queries keep their own scope
    correctness: Correctness = Correctness()


DURATION_UNITS = {"d": DAY, "h": 3600, "m": 60, "s": 1}  # largest first
_DURATION = re.compile(r"^(\d+)([dhms])$")


def duration_label(seconds: int) -> str:
    """5m, 1h, 1d, 30d: the largest unit that divides exactly."""
    return next(f"{seconds // size}{unit}" for unit, size in DURATION_UNITS.items() if seconds % size == 0)


def duration_seconds(text: str) -> int | None:
    """The inverse of duration_label ("15m" -> 900); None for anything else."""
    match = _DURATION.match(text)
    return int(match[1]) * DURATION_UNITS[match[2]] if match else None


def event_guard(factor: float, error_budget: float) -> int:
    """The fewest events a burn alert's long window needs so that one failed request cannot fire it.

    The alert fires when the error ratio exceeds factor x budget; one error in N events is a
    ratio of 1/N, which stays at or under the threshold once N >= 1 / (factor x budget). So
    N = ceil(1 / (factor x budget)): 70 for 14.4x at 99.9%, 1000 for 1x at 99.9%. (The small
    epsilon keeps a quotient that is whole in decimal, like 1 / 0.05, from rounding up.)
    """
    return max(1, math.ceil(1 / (factor * error_budget) - 1e-9))


def _round_minutes(seconds: float) -> int:
    return max(60, int(round(seconds / 60)) * 60)


def client_le(bound: float) -> str:
    """A bucket bound as prometheus_client (and so vLLM) writes `le`: Python's repr of the float, in
    Go's exponent form from 1e7 up (its `floatToGoString`; tests compare the two)."""
    if math.isinf(bound):
        return "+Inf" if bound > 0 else "-Inf"
    if math.isnan(bound):
        return "NaN"
    text = repr(float(bound))
    dot = text.find(".")
    if bound > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def le_matcher(bound: float) -> Matcher:
    """Matches the bucket whichever way `le` is written: prometheus_client (and so vLLM) writes 10.0,
    Prometheus 3 normalises classic-histogram `le` values on ingestion to 10."""
    forms = sorted({client_le(bound), f"{bound:.17g}"}, key=len, reverse=True)
    if len(forms) == 1:
        return Matcher("le", "=", forms[0])
    return Matcher("le", "=~", "|".join(re.escape(form) for form in forms))


