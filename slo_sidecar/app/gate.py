"""The load-test gate's judgement: what a load run measured, against the SLO spec's objectives.

Pure: it reads request results and two /metrics texts, never the network.
Two views, each judged against the same spec:
- the server's: every SLO the sidecar can evaluate, computed from the engine's
  own counters before and after the run with the spec's selectors, so the gate
  and the alerts agree on what "good" means;
- the client's: latency SLIs whose histogram a client can time (TTFT, inter-token,
  end-to-end), goodput targets and the error rate, as the caller saw them,
  network and HTTP included.
With tenants (a load spread over a base model and its LoRA adapters), each
tenant is judged on its own: its own requests, and the engine's counters
selected by its `model` label, against the SLOs that apply to it (see
`tenant_slos`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any


from slo_sidecar.spec.buckets import HTTP_DURATION_HISTOGRAM
from slo_sidecar.sidecar.exposition import SampleFilter, parse
from slo_sidecar.spec.model import OTHER_SLICE, TENANT_LABEL, EventSum, Matcher, Scrape, Slo, Spec

# Histograms a client can time itself, and the client measurement that matches each.
CLIENT_MEASURE = {
    "vllm:time_to_first_token_seconds": "ttft",
    "vllm:inter_token_latency_seconds": "itl",
    "vllm:e2e_request_latency_seconds": "e2e",
    HTTP_DURATION_HISTOGRAM: "e2e",
}
# The engine's per-request targets a client can time, and the client measurement of each (the mean
# gap between content chunks stands for time per output token; queue time is the server's alone).
TARGET_MEASURE = {"ttft_s": "ttft", "tpot_s": "itl", "e2e_s": "e2e"}
QUANTILES = (0.5, 0.95, 0.99)
Samples = Scrape  # sample name: [(labels, value)], the shape EventSum.increase reads


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def samples_by_name(text: str, names: set[str] | None = None) -> Samples:
    """{sample name: [(labels, value)]} from a Prometheus text exposition, optionally only some names:
    read by the sidecar's parser (one reader of expositions in the project), every family the text
    types when no names are given."""
    families = names if names is not None else {line.split()[2] for line in text.splitlines()
                                                if line.startswith("# TYPE ") and len(line.split()) > 2}
    found: Samples = {}
    for sample in parse(text, SampleFilter(families)):
        if names is None or sample.name in names:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def server_events(slo: Slo, start: Samples, end: Samples) -> tuple[float, float]:
    """(bad, total) events of the SLO between two scrapes of the engine, each parsed by samples_by_name
    (an engine restarted in between counts from zero, as increase() does)."""
    return slo.sli.errors.increase(start, end), slo.sli.total.increase(start, end)


def with_matcher(events: EventSum | None, matcher: Matcher) -> EventSum | None:
    """The same sum with `matcher` added to each selection (once: one already there is not repeated)."""
    return None if events is None else events.narrowed(matcher)


def scoped_to_tenant(slo: Slo, tenant: str, label: str = TENANT_LABEL) -> Slo:
    """The SLO judged on one tenant's events only: `label="tenant"` added to every selection of its SLI.

    Pure. A PromQL-only SLI (no selections) is returned as it is: the gate cannot scope what it cannot read."""
    if not slo.sli.sidecar_can_evaluate:
        return slo
    matcher = Matcher(label, "=", tenant)
    return replace(slo, sli=replace(slo.sli, errors=with_matcher(slo.sli.errors, matcher),
                                    total=with_matcher(slo.sli.total, matcher)))


def tenant_slos(spec: Spec, tenant: str, label: str = TENANT_LABEL) -> list[Slo]:
    """The SLOs of the spec that apply to one tenant, each scoped to its events, in the spec's order:
    an unsliced SLO; of a sliced one, the tenant's own slice (slice == {label: tenant}) with its own
    objective, or, for a tenant the SLO's slices do not name, its "other" slice (none: not judged).
    A slice by other labels than the tenant's is judged as an unsliced SLO is. A time-slice SLO is no tenant's."""
    named: dict[str, set[str]] = {}
    for slo in spec.slos:
        if label in slo.slice:
            named.setdefault(slo.name, set()).add(slo.slice[label])
    chosen = []
    for slo in spec.slos:
        if slo.sli.timeslices is not None:  # minutes of the pod's, not a tenant's requests
            continue
        value = slo.slice.get(label)
        mine = slo.name in named and tenant in named[slo.name]
        if value is None or value == tenant or (value == OTHER_SLICE and not mine):
            chosen.append(scoped_to_tenant(slo, tenant, label))
    return chosen


def _carries(label: str, events: EventSum, samples: Samples) -> bool:
    """Whether any series the sum reads has the label at all (an engine from before tenants has none)."""
    return any(label in labels for _, selection in events.terms for labels, _ in samples.get(selection.metric, ()))


def per_request_itl(request) -> float | None:
    return sum(request.token_gaps_s) / len(request.token_gaps_s) if request.token_gaps_s else None


@dataclass
class ClientSummary:
    requests: int
    ok: int
    failed_by_status: dict[str, int]
    error_ratio: float  # server-caused failures (5xx, 429, broken streams, no answer) over requests judged
    latency_s: dict[str, dict[str, float]]  # measure -> {p50, p95, p99, mean}
    output_tokens_per_s: float
    total_tokens_per_s: float
    wall_s: float

    @classmethod
    def of(cls, results: list, wall_s: float) -> "ClientSummary":
        ok = [r for r in results if r.ok]
        failed: dict[str, int] = {}
        for r in results:
            if not r.ok:
                key = "stream error" if r.status == 200 else ("no answer" if r.status == 0 else str(r.status))
                failed[key] = failed.get(key, 0) + 1
        judged = [r for r in results if not _client_fault(r)]
        server_failed = sum(1 for r in judged if not r.ok)
        measures = {"ttft": [r.ttft_s for r in ok if r.ttft_s is not None],
                    "itl": [gap for r in ok for gap in r.token_gaps_s],
                    "e2e": [r.e2e_s for r in ok]}
        latency = {name: {**{f"p{round(q * 100)}": percentile(values, q) for q in QUANTILES},
                          "mean": sum(values) / len(values) if values else math.nan}
                   for name, values in measures.items()}
        output = sum(r.output_tokens for r in ok)
        prompt = sum(r.prompt_tokens for r in ok)
        return cls(len(results), len(ok), failed, server_failed / len(judged) if judged else math.nan, latency,
                   output / wall_s if wall_s else 0.0, (output + prompt) / wall_s if wall_s else 0.0, wall_s)


def _server_failure(result) -> bool:
    """Failed by the server as the engine's exact counters count it: 5xx, a broken stream, no answer."""
    return not result.ok and (result.status >= 500 or result.status in (0, 200))


def _client_fault(result) -> bool:
    """4xx other than 429: the request was wrong, which says nothing of the service (as the spec counts)."""
    return 400 <= result.status < 500 and result.status != 429


@dataclass
class Criterion:
    slo: str  # the SLO's key: its name, and a slice's value ("ttft/medical")
    view: str  # server or client
    target: str
    measured: str
    passed: bool | None  # None: not enough to judge
    note: str = ""
    tenant: str = ""  # the tenant judged; empty for a run on one model, judged over all events
    good: float | None = None  # the events behind `measured`, where it is a share (compare.py tests them)
    total: float | None = None


def _share(good: float, total: float) -> str:
    return f"{good / total:.2%} of {total:.0f}" if total else "no events"


def _events_note(slo: Slo, total: float) -> str:
    needed = math.ceil(1 / slo.error_budget) if slo.error_budget else 0
    return f"{total:.0f} events are too few to show {slo.objective:g}%: that takes {needed}" if total < needed else ""


def judge(spec: Spec, results: list, wall_s: float, metrics_before: str | None,
          metrics_after: str | None, tenants: Sequence[str] = ()) -> tuple[ClientSummary, list[Criterion]]:
    """The whole run's summary and the criteria: every SLO over all events, or with `tenants`, for each
    tenant the SLOs that apply to it (`tenant_slos`) on its own requests and counters."""
    summary = ClientSummary.of(results, wall_s)
    scrapes = (samples_by_name(metrics_before), samples_by_name(metrics_after)) if metrics_before and metrics_after \
        else None
    if not tenants:
        return summary, _criteria(spec.slos, results, scrapes)
    criteria: list[Criterion] = []
    for tenant in tenants:
        own = [r for r in results if r.model == tenant]
        criteria += [replace(c, tenant=tenant) for c in _criteria(tenant_slos(spec, tenant), own, scrapes, tenant)]
    return summary, criteria


def tenant_summaries(results: list, wall_s: float, tenants: Sequence[str]) -> dict[str, ClientSummary]:
    """Each tenant's requests summarised as the whole run's are (its tokens/s over the whole run's time)."""
    return {tenant: ClientSummary.of([r for r in results if r.model == tenant], wall_s) for tenant in tenants}


def _criteria(slos: Sequence[Slo], results: list, scrapes: tuple[Samples, Samples] | None,
              tenant: str = "") -> list[Criterion]:
    criteria: list[Criterion] = []
    for slo in slos:
        if slo.sli.kind == "correctness":  # no load shows a wrong answer: the golden check does
            criteria.append(Criterion(slo.key, "server", f">= {slo.objective:g}% good", "not measured", None,
                                      "golden probes: judged by validate --golden against a recorded baseline"))
            continue
        if slo.sli.timeslices is not None:  # minutes, not requests: the rules judge them
            criteria.append(Criterion(slo.key, "server", f">= {slo.objective:g}% good slices", "not measured", None,
                                      "a time-slice SLO: the rules judge its slices over the period"))
            continue
        if slo.sli.sidecar_can_evaluate and scrapes:
            criteria.append(_server_criterion(slo, scrapes, tenant))
        criteria.extend(_client_criteria(slo, results))
    return criteria


def _server_criterion(slo: Slo, scrapes: tuple[Samples, Samples], tenant: str) -> Criterion:
    target = f">= {slo.objective:g}% good"
    bad, total = server_events(slo, *scrapes)
    if total > 0:
        return Criterion(slo.key, "server", target, _share(total - bad, total),
                         (total - bad) / total >= slo.objective_ratio, _events_note(slo, total),
                         good=total - bad, total=total)
    note = "the engine counted no events"
    if tenant and not _carries(TENANT_LABEL, slo.sli.total, scrapes[1]):
        metrics = sorted({selection.metric for _, selection in slo.sli.total.terms})
        served = [metric for metric in metrics if scrapes[1].get(metric)] or metrics  # those the engine has
        note = f"the engine's {', '.join(served)} has no {TENANT_LABEL} label: no tenant's events to judge"
    return Criterion(slo.key, "server", target, _share(total - bad, total), None, note)


def _client_criteria(slo: Slo, results: list) -> list[Criterion]:
    ok = [r for r in results if r.ok]
    sli = slo.sli
    if sli.kind == "availability":
        judged = [r for r in results if not _client_fault(r)]
        good = sum(1 for r in judged if r.ok)
        return [Criterion(slo.key, "client", f">= {slo.objective:g}% answered", _share(good, len(judged)),
                          (good / len(judged) >= slo.objective_ratio) if judged else None,
                          _events_note(slo, len(judged)), good=good, total=len(judged))]
    if sli.kind == "latency" and sli.source == "exact":
        (key, limit), = sli.targets.items()
        measure = TARGET_MEASURE.get(key, key)
        return [_judged_criterion(slo, results, {key: limit}, f"{measure} <= {limit:g} s for >= {slo.objective:g}%")]
    if sli.kind == "latency" and sli.histogram in CLIENT_MEASURE:
        measure = CLIENT_MEASURE[sli.histogram]
        values = _values(measure, ok)
        if not values:
            return [Criterion(slo.key, "client", "", "not measured", None, f"{measure} needs --stream")]
        good = sum(1 for v in values if v <= sli.threshold_s)
        quantile = percentile(values, slo.objective_ratio)
        return [Criterion(slo.key, "client", f"{measure} <= {sli.threshold_s:g} s for >= {slo.objective:g}%",
                          f"{_share(good, len(values))} (p{slo.objective:g} {quantile * 1000:.0f} ms)",
                          good / len(values) >= slo.objective_ratio, _events_note(slo, len(values)),
                          good=good, total=len(values))]
    if sli.kind == "goodput":
        return [_judged_criterion(slo, results, sli.targets, f">= {slo.objective:g}% meet every target")]
    return []


def _judged_criterion(slo: Slo, results: list, targets: dict[str, float], target: str) -> Criterion:
    """As the engine judges: answered requests against every target, server failures as missed."""
    ok = [r for r in results if r.ok]
    untimed = [key for key in targets if key not in TARGET_MEASURE]
    if untimed or not ok or any(_values(TARGET_MEASURE[key], ok) == [] for key in targets):
        why = f"a client cannot time {', '.join(untimed)}" if untimed else "it needs --stream"
        return Criterion(slo.key, "client", "", "not measured", None, why)
    good = sum(1 for r in ok if all(_within(_judged_value(TARGET_MEASURE[key], r), limit)
                                    for key, limit in targets.items()))
    judged = len(ok) + sum(1 for r in results if _server_failure(r))
    return Criterion(slo.key, "client", target, _share(good, judged), good / judged >= slo.objective_ratio,
                     _events_note(slo, judged), good=good, total=judged)


def _value(measure: str, request) -> float | None:
    return {"ttft": request.ttft_s, "itl": per_request_itl(request), "e2e": request.e2e_s}[measure]


def _within(value: float | None, limit: float) -> bool:
    return value is not None and value <= limit


def _judged_value(measure: str, request) -> float | None:
    """As the engine judges: a one-token answer has no gap to miss the time-per-output-token target."""
    if measure == "itl" and not request.token_gaps_s and request.ttft_s is not None:
        return 0.0
    return _value(measure, request)


def _values(measure: str, requests: list) -> list[float]:
    """Per-request values; inter-token latency is each request's mean gap, as goodput and vLLM judge it."""
    return [v for v in (_value(measure, r) for r in requests) if v is not None]


def _passes(criteria: list[Criterion]) -> bool:
    return any(c.passed is not None for c in criteria) and not any(c.passed is False for c in criteria)


def tenant_verdicts(criteria: list[Criterion], tenants: Sequence[str] = ()) -> dict[str, bool]:
    """PASS or FAIL per tenant ("" for a run judged over all events): as `verdict`, on its criteria alone.
    A tenant named in `tenants` with no criterion at all did not pass: nothing judged is not a pass."""
    groups: dict[str, list[Criterion]] = {tenant: [] for tenant in tenants}
    for c in criteria:
        groups.setdefault(c.tenant, []).append(c)
    return {tenant: _passes(group) for tenant, group in groups.items()}


def verdict(criteria: list[Criterion], tenants: Sequence[str] = ()) -> bool:
    """PASS when nothing failed and at least one criterion could be judged, for every tenant."""
    verdicts = tenant_verdicts(criteria, tenants)
    return bool(verdicts) and all(verdicts.values())


def _summary_line(summary: ClientSummary) -> str:
    return (f"{summary.requests} sent, {summary.ok} ok"
            + (f", failed: {', '.join(f'{k} x{v}' for k, v in sorted(summary.failed_by_status.items()))}"
               if summary.failed_by_status else ""))


def table(summary: ClientSummary, criteria: list[Criterion], peaks: dict[str, float | None],
          tenants: dict[str, ClientSummary] | None = None) -> str:
    """The run's summary, then the criteria: one table, or with `tenants` (each tenant's summary by
    name) a table per tenant and its verdict; the last line is the overall PASS or FAIL."""
    lines = [f"requests: {_summary_line(summary)}"
             + f"; {summary.wall_s:.1f} s; {summary.output_tokens_per_s:.1f} output tokens/s "
               f"({summary.total_tokens_per_s:.1f} with prompts); error ratio {summary.error_ratio:.2%}",
             "", f"{'latency (client)':<18}{'p50':>10}{'p95':>10}{'p99':>10}{'mean':>10}"]
    names = {"ttft": "time to 1st token", "itl": "inter-token", "e2e": "end-to-end"}
    for measure, stats in summary.latency_s.items():
        lines.append(f"{names[measure]:<18}" + "".join(f"{_ms(stats[k]):>10}" for k in ("p50", "p95", "p99", "mean")))
    memory = ", ".join(f"{name} {_memory(name, value)}" for name, value in peaks.items() if value is not None)
    lines += ["", f"peak memory: {memory or 'not reported by the engine'}", ""]
    width = max([len(c.slo) for c in criteria] + [3])
    target_width = max([len(c.target) for c in criteria] + [6])
    if not tenants:
        lines.append(f"{'SLO':<{width}}  {'view':<6}  {'target':<{target_width}}  {'measured':<28}  result")
        lines += [_row(c, width, target_width) for c in criteria]
        lines += ["", "PASS" if verdict(criteria) else "FAIL"]
        return "\n".join(lines)
    tenant_width = max([len(name) for name in tenants] + [6])
    verdicts = tenant_verdicts(criteria, list(tenants))
    for name, own in tenants.items():
        ttft = own.latency_s["ttft"]
        lines += [f"tenant {name}: {_summary_line(own)}; error ratio {own.error_ratio:.2%}; time to 1st token "
                  f"p50 {_ms(ttft['p50'])}, p99 {_ms(ttft['p99'])}",
                  f"{'tenant':<{tenant_width}}  {'SLO':<{width}}  {'view':<6}  {'target':<{target_width}}  "
                  f"{'measured':<28}  result"]
        lines += [f"{name:<{tenant_width}}  " + _row(c, width, target_width) for c in criteria if c.tenant == name]
        lines += [f"{name}: {'PASS' if verdicts[name] else 'FAIL'}", ""]
    lines.append("PASS" if verdict(criteria, list(tenants)) else "FAIL")
    return "\n".join(lines)


def _row(c: Criterion, width: int, target_width: int) -> str:
    result = {True: "PASS", False: "FAIL", None: "n/a"}[c.passed]
    note = f"  ({c.note})" if c.note else ""
    return f"{c.slo:<{width}}  {c.view:<6}  {c.target:<{target_width}}  {c.measured:<28}  {result}{note}"


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def _memory(name: str, value: float) -> str:
    return f"{value:.1%}" if name.endswith("ratio") else f"{value / 2**20:.0f} MiB"


def report(settings: dict[str, Any], model: str, summary: ClientSummary, criteria: list[Criterion],
           peaks: dict[str, float | None], tenants: dict[str, ClientSummary] | None = None) -> dict[str, Any]:
    """The JSON report; with `tenants`, each tenant's verdict and summary too (its criteria carry its name)."""
    def clean(value: Any) -> Any:  # JSON has no NaN
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    names = list(tenants or ())
    document = {"passed": verdict(criteria, names), "model": model, "settings": settings, "summary": asdict(summary),
                "peak_memory": peaks, "criteria": [asdict(c) for c in criteria]}
    if tenants:
        verdicts = tenant_verdicts(criteria, names)
        document["tenants"] = [{"name": name, "passed": verdicts[name], "summary": asdict(own)}
                               for name, own in tenants.items()]
    return clean(document)
