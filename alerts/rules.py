"""Prometheus recording and alerting rules from the SLO spec: pure code, spec in, rule groups out.

Recording rules use Sloth's names and labels (`slo:sli_error:ratio_rate5m`,
`slo:objective:ratio`, ..., `sloth_id`/`sloth_service`/`sloth_slo`/`sloth_window`),
so dashboards built for Sloth work unchanged. They are built to stay cheap on a
fleet of hundreds of pods:
- only the short windows (up to 6h for a 30-day period) read the raw counters,
  once each for errors and total (`slo:sli_error_events:rate<w>`,
  `slo:sli_total_events:rate<w>`); each ratio divides those recordings;
- the long windows (1d, 3d) and the period are summed from the 5m recordings, in
  a group of their own, never from days of raw samples;
  their ratio is the ratio of summed event rates, weighted by traffic, not an
  average of 5m ratios (a quiet night must not count as much as a busy day);
- split (`generate --split local,global`), the raw-reading rules run on each
  Prometheus and the rest on a ruler over the long-term store.

Alerts: the SRE Workbook's multi-window, multi-burn-rate page and ticket
alerts per SLO, an absent-SLI alert, and the operational alerts, each with
severity, summary, a description with the live value, `for:` and a runbook.
"""

from __future__ import annotations

from typing import Any, Callable

from slo_sidecar.dashboards import definitions
from slo_sidecar.dashboards.model import panel_url
from slo_sidecar.spec.model import (
    GOLDEN_BAD_IN_A_ROW,
    PROBE_MISSED,
    RELEASE_ALLOWED,
    RELEASE_ALLOWED_REASON,
    RELEASE_FROZEN,
    RELEASE_REASONS,
    TIMESLICE_GOOD,
    BurnAlert,
    EventSum,
    Operational,
    Selection,
    Slo,
    Spec,
    duration_label,
    event_guard,
)

# A floor under every native SLI's event rate: with no events the error ratio reads 0 (nothing
# failed, no budget spent) instead of NaN, so a healthy idle service shows burn 0 and its whole
# budget. Any real rate is far above it (one event in 30 days is 3.9e-7 per second).
NO_EVENTS_FLOOR = "1e-12"
PAGE_FOR = "1m"
TICKET_FOR = "10m"
ABSENT_FOR = "10m"


def slo_id(spec: Spec, slo: Slo) -> str:
    """Sloth's id of an SLO, service-slo; a slice's adds its value (llm-inference-ttft-medical): the id
    tells each slice's recordings and alerts apart, while sloth_slo stays the SLO's name."""
    return "-".join((spec.service, slo.name, *slo.slice.values()))


def sloth_labels(spec: Spec, slo: Slo) -> dict[str, str]:
    return {"sloth_id": slo_id(spec, slo), "sloth_service": spec.service, "sloth_slo": slo.name}


def _title(slo: Slo) -> str:
    """How alerts name the SLO: "the ttft SLO", or for a slice "the ttft SLO of model medical"."""
    return f"the {slo.name} SLO" + "".join(f" of {label} {value}" for label, value in slo.slice.items())


def _which(spec: Spec) -> str:
    """The service an alert is about, as its identity labels' values, for summaries: " (ns/model)"."""
    if not spec.identity:
        return ""
    return " (" + "/".join(f"{{{{ $labels.{label} }}}}" for label in spec.identity) + ")"


def _id_selector(spec: Spec, slo: Slo) -> str:
    return f'{{sloth_id="{slo_id(spec, slo)}", sloth_service="{spec.service}", sloth_slo="{slo.name}"}}'


# A window at least this many base windows long is summed from the base window's recordings instead of
# read from the raw counters (see long_rules); a shorter one is read raw, where the recordings' edges would
# weigh more than 1/LONG_WINDOW_FACTOR of its events.
LONG_WINDOW_FACTOR = 100
# The long windows' group has no interval of its own. It could run slower (a 1-day ratio 2 minutes old is off
# by at most 2m/1d of its events), but it holds the period's ratio, and a new service must read its whole error
# budget from the first evaluation, not minutes later. What it reads is a few recorded series per service,
# whatever the pods; set `interval:` on the `-long-` groups to cut it further.


def _has_events(slo: Slo) -> bool:
    """Whether the SLI's error and total events are known (native, or Sloth's events SLI), not just a ratio."""
    sli = slo.sli
    return (sli.errors is not None and sli.total is not None) or (sli.raw_errors is not None and sli.raw_total is not None)


def _slo_labels(spec: Spec, slo: Slo) -> dict[str, str]:
    """The static labels of every rule of an SLO: the spec's, the SLO's, and Sloth's ids."""
    return {**spec.labels, **slo.labels, **sloth_labels(spec, slo)}


def _event_queries(spec: Spec, slo: Slo, window: str) -> tuple[str, str] | None:
    """(error event rate, total event rate) over the window, from the raw counters, per service; None for
    an SLI that is only a ratio."""
    sli = slo.sli
    if sli.errors is not None and sli.total is not None:
        return sli.errors.rate_promql(window, spec.identity), sli.total.rate_promql(window, spec.identity)
    if sli.raw_errors is not None and sli.raw_total is not None:
        return ("(" + sli.raw_errors.replace("{{.window}}", window) + ")",
                "(" + sli.raw_total.replace("{{.window}}", window) + ")")
    return None


def _ratio(slo: Slo, errors: str, total: str) -> str:
    """errors / total, per service: a native SLI's total has a floor (an idle service reads 0, not NaN);
    Sloth's events SLI keeps its ratio as Sloth writes it."""
    if slo.sli.errors is not None:
        total = f"clamp_min({total}, {NO_EVENTS_FLOOR})"
    return f"{errors}\n/\n{total}"


def _per_service(spec: Spec, expr: str) -> str:
    """Summed per service: recordings from several Prometheus servers (shards of one fleet, read through
    Thanos or Mimir) add up; on one server it changes nothing. A Sloth spec's queries keep their own scope,
    in parentheses: the result is one operand, whatever `expr` holds (a long window's events are a sum, and
    `a + b / c + d` divides only the middle terms)."""
    return f"sum by ({', '.join(spec.identity)}) ({expr})" if spec.identity else f"({expr})"


def _windows(slo: Slo) -> tuple[list[int], list[int]]:
    """(short windows, long windows), without the period: a long window (and the period) is summed from the
    base window's recordings where the SLI has events; an SLI that is only a ratio reads every window raw."""
    windows = [w for w in slo.windows() if w != slo.period_s]
    if not _has_events(slo):
        return windows, []
    return ([w for w in windows if w < LONG_WINDOW_FACTOR * slo.base_window_s],
            [w for w in windows if w >= LONG_WINDOW_FACTOR * slo.base_window_s])


def _record(name: str, expr: str, labels: dict[str, str], window: str) -> dict[str, Any]:
    return {"record": name, "expr": expr, "labels": {**labels, "sloth_window": window}}


def event_rules(spec: Spec, slo: Slo) -> list[dict[str, Any]]:
    """What reads the raw counters, next to the data: each short window's error and total event rates (an
    SLI that is only a ratio: its ratio), and when the base window's recording was made (see coverage)."""
    labels = _slo_labels(spec, slo)
    short, _ = _windows(slo)
    rules = []
    for window in map(duration_label, short):
        events = _event_queries(spec, slo, window)
        if events is None:
            ratio = "(" + (slo.sli.raw_error_ratio or "").replace("{{.window}}", window) + ")"
            rules.append(_record(f"slo:sli_error:ratio_rate{window}", ratio, labels, window))
            continue
        rules.append(_record(f"slo:sli_error_events:rate{window}", events[0], labels, window))
        rules.append(_record(f"slo:sli_total_events:rate{window}", events[1], labels, window))
    if _has_events(slo):
        base = duration_label(slo.base_window_s)
        rules.append(_record("slo:sli_total_events:timestamp", f"timestamp(slo:sli_total_events:rate{base}"
                             f"{_id_selector(spec, slo)})", labels, base))
    return rules


def ratio_rules(spec: Spec, slo: Slo) -> list[dict[str, Any]]:
    """Each short window's error ratio, from the recorded event rates (cheap: a few series per service)."""
    if not _has_events(slo):
        return []
    labels, selector = _slo_labels(spec, slo), _id_selector(spec, slo)
    short, _ = _windows(slo)
    return [_record(f"slo:sli_error:ratio_rate{w}",
                    _ratio(slo, _per_service(spec, f"slo:sli_error_events:rate{w}{selector}"),
                           _per_service(spec, f"slo:sli_total_events:rate{w}{selector}")), labels, w)
            for w in map(duration_label, short)]


def long_rules(spec: Spec, slo: Slo) -> list[dict[str, Any]]:
    """The long windows (1d, 3d) and the period, summed from the base window's recordings, never from days
    of raw counters.

    The base window's rate r (5m), recorded every interval and averaged over a window W, times the span
    the recordings cover, counts every event of the window once, but near its edges: each recording
    averages the 5 minutes before it, so the last 5 minutes count only in part (a ramp from 1 down to 0)
    and the 5 minutes before the window's start count in part (a ramp up). With the rate about steady
    over those 5 minutes, the missing part is r(now) x 150 s and the extra part r(now - W) x 150 s; adding
    the one and taking away the other leaves an error of second order, not the 2.5-minute lag of the plain
    average (1% of a 1-day ratio three hours into an incident). The span covered is W, or less for a
    service younger than the window (`slo:sli_total_events:timestamp`): such a service is not credited
    with events it never had (the event guard counts them).
    """
    labels, selector = _slo_labels(spec, slo), _id_selector(spec, slo)
    _, long = _windows(slo)
    base_s = slo.base_window_s
    base = duration_label(base_s)
    rules = []
    for window_s in [*long, slo.period_s]:
        window = duration_label(window_s)
        if not _has_events(slo):  # a ratio alone: Sloth's average of base ratios
            expr = (f"sum_over_time(slo:sli_error:ratio_rate{base}{selector}[{window}])\n"
                    f"/ ignoring (sloth_window)\n"
                    f"count_over_time(slo:sli_error:ratio_rate{base}{selector}[{window}])")
            rules.append(_record(f"slo:sli_error:ratio_rate{window}", expr, labels, window))
            continue
        covered = (f"{window_s} * clamp_max((time() - min_over_time(slo:sli_total_events:timestamp{selector}"
                   f"[{window}])) / {window_s - base_s}, 1)")

        def events(kind: str) -> str:
            rate = f"slo:sli_{kind}_events:rate{base}{selector}"
            return _per_service(spec, f"avg_over_time({rate}[{window}]) * {covered}\n"
                                      f"+ {base_s / 2:g} * ({rate} - ({rate} offset {window} or {rate} * 0))")

        rules.append(_record(f"slo:sli_error:ratio_rate{window}", _ratio(slo, events("error"), events("total")),
                             labels, window))
        if window_s != slo.period_s:  # the event guard's count; no alert counts the period's events
            rules.append(_record(f"slo:sli_total_events:rate{window}", f"{events('total')}\n/ {window_s}",
                                 labels, window))
    return rules


def timeslice_groups(spec: Spec, slo: Slo) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the verdicts, the ratios) of a time-slice SLI. The verdicts' group runs once a slice: each evaluation
    judges the slice just ended, 1 good or 0 bad (TIMESLICE_GOOD). A window's error ratio is the share of
    bad slices in it, 1 - the verdicts' average; its events are the slices it holds, so the alerts' event
    guard counts slices (one bad slice alone cannot fire them)."""
    timeslices = slo.sli.timeslices
    assert timeslices is not None
    labels, selector = _slo_labels(spec, slo), _id_selector(spec, slo)
    ident, slice_ = slo_id(spec, slo), duration_label(timeslices.slice_s)
    verdicts = {"name": f"sloth-slo-timeslices-{ident}", "interval": slice_,
                "rules": [{"record": TIMESLICE_GOOD, "expr": timeslices.verdict_promql(spec.identity),
                           "labels": {**labels, "sloth_window": slice_}}]}
    ratios = []
    for window_s in slo.windows():
        window = duration_label(window_s)
        verdict = f"{TIMESLICE_GOOD}{selector}[{window}]"
        ratios.append(_record(f"slo:sli_error:ratio_rate{window}", f"1 - avg_over_time({verdict})", labels, window))
        ratios.append(_record(f"slo:sli_total_events:rate{window}", f"count_over_time({verdict}) / {window_s}",
                              labels, window))
    return verdicts, {"name": f"sloth-slo-sli-recordings-{ident}", "rules": ratios}


def recording_groups(spec: Spec, slo: Slo, split: bool = False) -> tuple[list[dict], list[dict]]:
    """(local groups, global groups) of the SLI recordings. Local: what reads the raw counters, to run on
    each Prometheus next to its data; global: what reads only recordings (ratios, long windows, the
    period), for a ruler over the long-term store (Thanos, Mimir, vmalert). Unsplit, the local rules and
    the short ratios share a group, so that each ratio reads this evaluation's rates."""
    ident = slo_id(spec, slo)
    if slo.sli.timeslices is not None:
        verdicts, ratio_group = timeslice_groups(spec, slo)
        return ([verdicts], [ratio_group]) if split else ([], [verdicts, ratio_group])
    events, ratios = event_rules(spec, slo), ratio_rules(spec, slo)
    long = {"name": f"sloth-slo-sli-long-recordings-{ident}", "rules": long_rules(spec, slo)}
    if not split:
        return [], [{"name": f"sloth-slo-sli-recordings-{ident}", "rules": events + ratios}, long]
    local = [{"name": f"sloth-slo-sli-event-recordings-{ident}", "rules": events}]
    return local, ([{"name": f"sloth-slo-sli-recordings-{ident}", "rules": ratios}] if ratios else []) + [long]


def _burn(window: str, selector: str) -> str:
    """The SLO's error ratio over the window divided by its error budget (1: spending it exactly over the period)."""
    return (f"slo:sli_error:ratio_rate{window}{selector}\n/ on (sloth_id, sloth_slo, sloth_service) group_left\n"
            f"slo:error_budget:ratio{selector}")


def metadata_group(spec: Spec, slo: Slo) -> dict[str, Any]:
    labels = _slo_labels(spec, slo)
    selector = _id_selector(spec, slo)
    budget = f"{slo.error_budget:.12g}"
    rules = [
        {"record": "slo:objective:ratio", "expr": f"vector({slo.objective_ratio:.12g})", "labels": labels},
        {"record": "slo:error_budget:ratio", "expr": f"vector(1 - {slo.objective_ratio:.12g})", "labels": labels},
        {"record": "slo:time_period:days", "expr": f"vector({slo.period_s // 86400})", "labels": labels},
        {"record": "slo:current_burn_rate:ratio", "expr": _burn(duration_label(slo.base_window_s), selector),
         "labels": labels},
        {"record": "slo:period_burn_rate:ratio", "expr": _burn(slo.period, selector), "labels": labels},
        {"record": "slo:period_error_budget_remaining:ratio",
         "expr": f"1 - slo:period_burn_rate:ratio{selector}", "labels": labels},
        {"record": "sloth_slo_info", "expr": "vector(1)",
         "labels": {**labels, "sloth_mode": "cli-gen-prom", "sloth_spec": spec.format,
                    "sloth_version": "slo-sidecar", "sloth_objective": f"{slo.objective:g}",
                    "slo_sidecar_error_budget": budget}},
    ]
    return {"name": f"sloth-slo-meta-recordings-{slo_id(spec, slo)}", "rules": rules + policy_rules(spec, slo)}


def policy_rules(spec: Spec, slo: Slo) -> list[dict[str, Any]]:
    """Whether this SLO holds releases back now (1) or not (0), for each reason its policy names: its period's
    budget left below `freeze_below_budget`; its burn over the fastest page's long window above
    `freeze_above_burn`. None without a policy."""
    policy = slo.policy
    if policy is None:
        return []
    labels, selector = _slo_labels(spec, slo), _id_selector(spec, slo)
    rules = [{"record": RELEASE_FROZEN,
              "expr": f"slo:period_error_budget_remaining:ratio{selector} < bool {policy.freeze_below_budget:.12g}",
              "labels": {**labels, "reason": "budget"}}]
    if policy.freeze_above_burn is not None:
        rules.append({"record": RELEASE_FROZEN,
                      "expr": (f"{_burn(duration_label(slo.policy_burn_window_s), selector)}"
                               f"\n> bool {policy.freeze_above_burn:.12g}"),
                      "labels": {**labels, "reason": "burn"}})
    return rules


def release_group(spec: Spec) -> dict[str, Any] | None:
    """Per service, whether releases may go (1) or are frozen (0), with the first of RELEASE_REASONS that froze
    them (`none` while they may go): one series per service, from its SLOs' policies. None where no SLO has a
    policy."""
    if not any(slo.policy for slo in spec.slos):
        return None
    by = ", ".join(("sloth_service", *spec.identity))
    service = f'sloth_service="{spec.service}"'
    branches = [f'label_replace(max by ({by}) ({RELEASE_FROZEN}{{{service}, reason="{reason}"}}) == 1, '
                f'"reason", "{reason}", "", "") * 0' for reason in RELEASE_REASONS]
    branches.append(f'label_replace(max by ({by}) ({RELEASE_FROZEN}{{{service}}}), "reason", '
                    f'"{RELEASE_ALLOWED_REASON}", "", "") * 0 + 1')
    return {"name": f"slo-sidecar-release-policy-{spec.service}",
            "rules": [{"record": RELEASE_ALLOWED, "expr": f"\nor on ({by})\n".join(branches),
                       **({"labels": dict(spec.labels)} if spec.labels else {})}]}


def alert_group(spec: Spec, slo: Slo) -> dict[str, Any]:
    selector = _id_selector(spec, slo)
    timeslices = slo.sli.timeslices
    guarded = _has_events(slo) or timeslices is not None  # a time-slice SLI's events: its slices
    rules: list[dict[str, Any]] = []
    for tier_name, for_ in (("page", PAGE_FOR), ("ticket", TICKET_FOR)):
        tier = getattr(slo, tier_name)
        alerts = [a for a in slo.burn_alerts() if a.tier == tier_name]
        if not tier.enabled:
            continue
        terms = [_burn_condition(slo, alert, selector, guarded) for alert in alerts]
        windows = " or ".join(f"{a.factor:g}x over {duration_label(a.long_s)} and {duration_label(a.short_s)}"
                              for a in alerts)
        rules.append({
            "alert": slo.alert_name,
            "expr": "\nor\n".join(terms),
            "for": for_,
            "labels": {**spec.labels, **slo.labels, **tier.labels, "severity": tier.severity,
                       "sloth_severity": tier_name, "tier": tier_name, **sloth_labels(spec, slo)},
            "annotations": {
                "summary": f"{spec.service}{_which(spec)}: {_title(slo)} ({slo.objective:g}% over "
                           f"{slo.period}) is burning its error budget too fast",
                "description": (f"{slo.description}. Error ratio {{{{ $value | humanizePercentage }}}} over the "
                                f"short window; the {tier_name} fires at a burn of {windows} (error budget "
                                f"{slo.error_budget * 100:.3g}%)."),
                "runbook_url": spec.runbook_base_url + "slo-burn.md",
                "dashboard_url": _slo_panel(spec, slo, "Burn rate by window"),
                **tier.annotations,
            },
        })
    fast = slo.fast_burn()
    if fast is not None and slo.page.enabled and _has_events(slo):  # most requests failing: not for slices
        rules.append({
            "alert": slo.alert_name + "Outage",
            "expr": _burn_condition(slo, fast, selector, guarded),
            "for": "0s",  # the 1-minute window is its persistence: any wait would pass 90 s
            "labels": _page_labels(spec, slo),
            "annotations": {
                "summary": f"{spec.service}{_which(spec)}: {_title(slo)} is failing most requests",
                "description": (f"{slo.description}. {{{{ $value | humanizePercentage }}}} of the events failed "
                                f"over the last minute, and over half over {duration_label(fast.long_s)} in "
                                f"{fast.min_events} or more: a total or near-total outage (fires with no wait; "
                                f"the burn-rate page follows)."),
                "runbook_url": spec.runbook_base_url + "slo-burn.md",
                "dashboard_url": _slo_panel(spec, slo, "Burn rate by window"),
                **slo.page.annotations,
            },
        })
    if slo.sli.kind == "correctness" and slo.page.enabled:
        rules.append(_golden_page(spec, slo))
    total = slo.sli.total
    if timeslices is not None:
        total = EventSum(((1, timeslices.source),))
    if total is not None:
        rules.append({
            "alert": slo.alert_name + "SLIAbsent",
            "expr": " and ".join(f"absent({selection.promql()})" for _, selection in total.terms),
            "for": ABSENT_FOR,
            "labels": {**spec.labels, **slo.labels, "severity": slo.ticket.severity, "tier": "ticket",
                       **sloth_labels(spec, slo)},
            "annotations": {
                "summary": f"{spec.service}: {_title(slo)} has no data",
                "description": (f"No series for the {slo.name} SLI ({total.terms[0][1].promql()}) for "
                                f"{ABSENT_FOR}: the SLO and its burn-rate alerts are blind. Value "
                                f"{{{{ $value }}}}."),
                "runbook_url": spec.runbook_base_url + "sli-absent.md",
                "dashboard_url": _slo_panel(spec, slo, "SLI over the period"),
            },
        })
    return {"name": f"sloth-slo-alerts-{slo_id(spec, slo)}", "rules": rules}


def _page_labels(spec: Spec, slo: Slo) -> dict[str, str]:
    """The labels of a page that is not a burn-rate tier's (the outage page, the golden probes' page): the
    page tier's, so Alertmanager routes and inhibits them as the burn-rate page."""
    return {**spec.labels, **slo.labels, **slo.page.labels, "severity": slo.page.severity,
            "sloth_severity": "page", "tier": "page", **sloth_labels(spec, slo)}


def _golden_page(spec: Spec, slo: Slo) -> dict[str, Any]:
    """A correctness SLO's fast page: `bad_in_a_row` golden probes in a row were bad. No wait and no burn rate:
    a pod that answers wrong is worse than one that does not answer (the sidecar quarantines it, if asked)."""
    probes = slo.sli.golden_probes
    in_a_row = Selection(GOLDEN_BAD_IN_A_ROW, probes.matchers).promql()
    if spec.identity:  # one sidecar per pod: the worst pod of the service
        in_a_row = f"max by ({', '.join(spec.identity)}) ({in_a_row})"
    count = spec.correctness.bad_in_a_row
    return {
        "alert": slo.alert_name + "GoldenProbesBad",
        "expr": f"{in_a_row} >= {count}",
        "for": "0s",
        "labels": _page_labels(spec, slo),
        "annotations": {
            "summary": f"{spec.service}{_which(spec)}: answers that score unlike the model's baseline",
            "description": (f"{{{{ $value }}}} golden probes in a row scored further than "
                            f"{spec.correctness.tolerance:g} nats/token from their recorded baseline (pages at "
                            f"{count}): the pod answers, but wrong. Corrupted weights, a bad GPU or NaN logits."),
            "runbook_url": spec.runbook_base_url + "correctness.md",
            "dashboard_url": _slo_panel(spec, slo, "Burn rate by window"),
            **slo.page.annotations,
        },
    }


def _burn_condition(slo: Slo, alert: BurnAlert, selector: str, guarded: bool) -> str:
    """The SRE Workbook's two-window condition: both windows' error ratios over factor x budget, and
    enough events in the long window that one failure cannot cross it (the event guard)."""
    threshold = f"({alert.factor:g} * {slo.error_budget:.12g})"
    long, short = duration_label(alert.long_s), duration_label(alert.short_s)
    term = (f"(\n  max(slo:sli_error:ratio_rate{short}{selector} > {threshold}) without (sloth_window)\n"
            f"  and\n  max(slo:sli_error:ratio_rate{long}{selector} > {threshold}) without (sloth_window)")
    if guarded:
        term += (f"\n  and\n  max(slo:sli_total_events:rate{long}{selector} * {alert.long_s} >= "
                 f"{alert.min_events}) without (sloth_window)")
    return term + "\n)"


def _slo_panel(spec: Spec, slo: Slo, title: str) -> str:
    return panel_url(spec.grafana_url, definitions.slo_overview(spec), f"{slo.name}: {slo.description}", title)


def _error_rate_alert(spec: Spec, op: Operational, alert: Callable[..., dict[str, Any]]) -> list[dict[str, Any]]:
    """The availability SLO's own errors over its own events (no 4xx, no 499), per instance: a ticket
    that points at the failing pod, once 5 minutes hold enough requests that one failure cannot cross
    it. It never pages: the SLO's burn-rate page does that."""
    availability = [slo for slo in spec.slos if slo.sli.kind == "availability"]
    slo = next((slo for slo in availability if not slo.slice), next(iter(availability), None))
    if slo is None or slo.sli.errors is None or slo.sli.total is None:
        return []
    # The engine's own counts, every tenant's: the probes' stand-ins for lost requests belong to the
    # sidecar's instance, and a slice's matcher on its tenant is left out (the pod fails, not a tenant).
    errors, total = (events.without(PROBE_MISSED).unsliced(tuple(slo.slice)).rate_promql("5m", ("instance",))
                     for events in (slo.sli.errors, slo.sli.total))
    guard = event_guard(1, op.error_ratio_alert)  # one failed request alone cannot cross the ratio
    return [alert("LLMHighErrorRate", f"({errors})\n/\n({total}) > {op.error_ratio_alert:g}\nand on (instance)\n"
                  f"{total} * 300 >= {guard}", "5m", "warning",
                  f"More than {op.error_ratio_alert:.0%} of requests fail on one instance",
                  f"{{{{ $value | humanizePercentage }}}} of the {slo.name} SLO's requests on "
                  "{{ $labels.instance }} failed over 5 minutes; the SLO's own alerts say whether the "
                  "budget is at risk.", "high-error-rate.md")]


def operational_group(spec: Spec) -> dict[str, Any] | None:
    """Alerts on the pod's machinery, at the thresholds in the spec's `operational` section (None without)."""
    op = spec.operational
    if op is None:
        return None
    who = ", ".join(spec.identity)
    base = spec.runbook_base_url

    boards = {"engine": definitions.engine(spec), "gpu": definitions.gpu(spec)}
    panels = {  # alert -> (dashboard, row, panel) its annotation links to
        "LLMServiceDown": ("engine", "Traffic", "Requests by status"),
        "LLMEngineDown": ("engine", "Traffic", "Requests by status"),
        "LLMSidecarCollectorFailing": ("engine", "Traffic", "Requests by status"),
        "LLMSidecarAbsent": ("engine", "Traffic", "Requests by status"),
        "LLMSidecarFamiliesMissing": ("engine", "Traffic", "Requests by status"),
        "LLMSidecarStateNotSaved": ("engine", "Traffic", "Requests by status"),
        "LLMHighLatencyP99": ("engine", "Latency", "Time to first token"),
        "LLMHighErrorRate": ("engine", "Traffic", "Error ratio"),
        "LLMQueueDepthHigh": ("engine", "Tokens and scheduler", "Running and waiting requests"),
        "LLMGpuUnderutilizedWhileBusy": ("gpu", "Load and memory", "GPU utilisation"),
        "LLMKvCacheNearFull": ("engine", "Tokens and scheduler", "KV cache usage"),
        "LLMPreemptions": ("engine", "Tokens and scheduler", "Preemptions"),
        "LLMGpuXidErrors": ("gpu", "Health", "XID errors"),
        "LLMGpuTemperatureHigh": ("gpu", "Health", "Temperature"),
        "LLMGpuThrottled": ("gpu", "Health", "Throttle reasons"),
    }

    def alert(name: str, expr: str, for_: str, severity: str, summary: str, description: str,
              runbook: str) -> dict[str, Any]:
        board, row, title = panels[name]
        return {"alert": name, "expr": expr, "for": for_,
                "labels": {**spec.labels, "severity": severity, "service": spec.service,
                           "tier": "page" if severity == "critical" else "ticket"},
                "annotations": {"summary": summary, "description": description, "runbook_url": base + runbook,
                                "dashboard_url": panel_url(spec.grafana_url, boards[board], row, title)}}

    rules = [
        # The whole service: every engine it had in the last hour is gone or not ready, whether or
        # not the sidecars live (a dead pod takes its sidecar with it). A page.
        alert("LLMServiceDown",
              f"count by ({who}) (last_over_time(slo_engine_ready[1h]))\nunless on ({who})\n"
              f"count by ({who}) (slo_engine_ready == 1)",
              "2m", "critical", f"No engine of the service{_which(spec)} is serving",
              "{{ $value }} engine(s) served it in the last hour and none is ready now, for 2 minutes: "
              "nothing answers this service's requests.", "engine-down.md"),
        # One pod: Prometheus cannot scrape an engine it scraped in the last hour. A ticket: the
        # service's other pods and its SLOs say whether users notice.
        alert("LLMEngineDown", "(up == 0)\nand on (instance, job)\nlast_over_time(slo_engine_ready[1h])", "2m",
              "warning", "An inference engine is down",
              "Prometheus has failed to scrape the engine at {{ $labels.instance }} for 2 minutes (up "
              "{{ $value }}).", "engine-down.md"),
        alert("LLMSidecarCollectorFailing", "sidecar_collector_up == 0", "5m", "warning",
              "A sidecar collector is failing",
              "The {{ $labels.collector }} collector on {{ $labels.instance }} has been down for 5 minutes "
              "(up {{ $value }}); see sidecar_collector_errors_total for the reason.", "sidecar-collector.md"),
        alert("LLMSidecarAbsent", "absent(sidecar_collector_up)", "5m", "warning",
              "Prometheus sees no slo-sidecar",
              "No sidecar_collector_up series for 5 minutes: the sidecar is down or not scraped (value "
              "{{ $value }}).", "sidecar-collector.md"),
        # A part of the sidecar's exposition failing at scrape time: its families are left out (absent,
        # not frozen), the rest served. For 5m: a lone failed scrape is a log line, not a ticket.
        alert("LLMSidecarFamiliesMissing", "increase(sidecar_exposition_errors_total[10m]) > 0", "5m", "warning",
              "A part of the sidecar's /metrics is failing",
              "The {{ $labels.collector }} families of the sidecar on {{ $labels.instance }} were left out of "
              "{{ $value | humanize }} scrapes in 10 minutes: a sidecar bug; its log has the traceback.",
              "sidecar-collector.md"),
        alert("LLMSidecarStateNotSaved", "increase(sidecar_slo_state_save_errors_total[15m]) > 0", "5m", "warning",
              "The sidecar cannot save its SLO state",
              "{{ $value | humanize }} failed saves of the SLO state file on {{ $labels.instance }} in 15 minutes "
              "(a full disk or an unwritable volume): a restart would lose the SLO windows since the last good "
              "save.", "sidecar-collector.md"),
        alert("LLMHighLatencyP99",
              f"histogram_quantile(0.99, sum by (le, instance) "
              f"(rate(vllm:time_to_first_token_seconds_bucket[5m]))) > {op.latency_p99_alert_s:g}",
              "5m", "warning", "P99 time to first token is above its alert threshold",
              f"P99 TTFT on {{{{ $labels.instance }}}} is {{{{ $value | humanizeDuration }}}} (alert above "
              f"{op.latency_p99_alert_s:g} s).", "high-latency.md"),
        *_error_rate_alert(spec, op, alert),
        alert("LLMQueueDepthHigh",
              "sum by (instance) (vllm:num_requests_waiting)\n/ on (instance)\n"
              f"max by (instance) (slo_engine_max_waiting_requests) > {op.queue_full_ratio_alert:g}",
              "5m", "warning", "vLLM's queue is nearly as long as the engine admits",
              f"Waiting requests on {{{{ $labels.instance }}}} fill {{{{ $value | humanizePercentage }}}} of the "
              f"queue the engine admits (alert above {op.queue_full_ratio_alert:.0%}); past it, clients get 429.",
              "high-latency.md"),
        alert("LLMGpuUnderutilizedWhileBusy",
              f"(avg by (instance) (sidecar_gpu_utilization_ratio) < {op.gpu_utilization_low:g})\nand on (instance)\n"
              f"(sum by (instance) (sidecar_engine_queue_depth + sidecar_engine_running_requests) > 0)",
              "15m", "warning", "GPUs are underused while requests are waiting or running",
              f"GPU utilisation {{{{ $value | humanizePercentage }}}} on {{{{ $labels.instance }}}} with work to "
              f"do (alert under {op.gpu_utilization_low:g}).", "low-throughput.md"),
        alert("LLMKvCacheNearFull", f"vllm:kv_cache_usage_perc > {op.kv_cache_high_ratio:g}", "10m", "warning",
              "The KV cache is nearly full",
              f"KV cache {{{{ $value | humanizePercentage }}}} used on {{{{ $labels.instance }}}} (alert above "
              f"{op.kv_cache_high_ratio:g}); expect preemptions.", "oom.md"),
        alert("LLMPreemptions",
              f"sum by (instance) (rate(vllm:num_preemptions_total[5m])) > {op.preemptions_per_second_alert:g}",
              "10m", "warning", "vLLM is preempting sequences",
              "{{ $value | humanize }} preemptions per second on {{ $labels.instance }}: the KV cache is too "
              "small for the load.", "oom.md"),
        # A code's first XID starts its series at 1, which increase() cannot see: a series that is
        # new within the window fires too.
        alert("LLMGpuXidErrors",
              "increase(sidecar_gpu_xid_errors_total[10m]) > 0\nor\n"
              "(sidecar_gpu_xid_errors_total unless sidecar_gpu_xid_errors_total offset 10m)",
              "1m", "critical", "The GPU reported XID errors",
              "XID {{ $labels.xid }} on GPU {{ $labels.gpu }} ({{ $labels.instance }}): {{ $value | humanize }} "
              "events in the last 10 minutes.", "gpu-health.md"),
        alert("LLMGpuTemperatureHigh", f"sidecar_gpu_temperature_celsius > {op.gpu_temperature_high_celsius:g}",
              "5m", "warning", "A GPU is running hot",
              f"GPU {{{{ $labels.gpu }}}} on {{{{ $labels.instance }}}} at {{{{ $value }}}} °C (alert above "
              f"{op.gpu_temperature_high_celsius:g}).", "gpu-health.md"),
        alert("LLMGpuThrottled",
              'max by (instance, gpu, reason) (sidecar_gpu_clock_throttle_reason_active{reason=~"hw_slowdown|'
              'hw_thermal_slowdown|hw_power_brake_slowdown|sw_thermal_slowdown"}) == 1',
              "10m", "warning", "A GPU's clocks are throttled",
              "GPU {{ $labels.gpu }} on {{ $labels.instance }} throttled by {{ $labels.reason }} for 10 minutes (active {{ $value }}).",
              "gpu-health.md"),
    ]
    return {"name": f"slo-sidecar-operational-{spec.service}", "rules": rules}
