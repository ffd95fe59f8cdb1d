"""The four dashboards, from the SLO spec: SLO overview, inference engine, GPU, cost and capacity.

Every threshold comes from the spec (SLO objectives and latency thresholds, the
operational alert thresholds, the burn factors), never typed here. Latency
percentiles are `histogram_quantile` over `sum by (le)` of `rate`, per the
Prometheus documentation (the reference design's queries skip both).

Two kinds of "model": `model_name` is the service's base model (on every engine
series, constant per process: picked by `$model_name`), `model` the tenant, the
served name a request asked for (the base model or a LoRA adapter: picked by
`$model`). Only series that carry `model` are filtered by `$model`: a matcher on
a label a series lacks reads it as "", so `model=~"medical"` would hide them.
"""

from __future__ import annotations

from slo_sidecar.spec.buckets import HTTP_DURATION_HISTOGRAM
from slo_sidecar.spec.model import (
    BURN_ALERTS_30D,
    GENERATION_TOKENS,
    GOODPUT_TOKENS,
    HTTP_REQUESTS,
    PROMPT_TOKENS,
    RELEASE_ALLOWED,
    SLO_COUNTER,
    TIMESLICE_GOOD,
    Slo,
    Spec,
    duration_label,
)

from .model import TENANT_VARIABLES, Dashboard, Panel, PanelQuery, Query, panel_queries, row_link

POD = 'namespace=~"$namespace", pod=~"$pod"'
MODEL = POD + ', model_name=~"$model_name"'
TENANT = 'model=~"$model"'  # only on series with a `model` label: the engine's per-tenant counters, sliced SLOs
GENERATION = 'endpoint=~"/v1/completions|/v1/chat/completions"'
RED, ORANGE = "red", "orange"

LATENCIES = (
    ("Time to first token", "vllm:time_to_first_token_seconds", "How long users wait for the first token."),
    ("Inter-token latency", "vllm:inter_token_latency_seconds", "How smoothly tokens stream once started."),
    ("Time per output token", "vllm:request_time_per_output_token_seconds",
     "Each request's mean time per token after the first."),
    ("End-to-end latency", "vllm:e2e_request_latency_seconds", "How long whole requests take."),
    ("Queue time", "vllm:request_queue_time_seconds", "How long requests wait for a slot: capacity's first warning."),
)
# What vLLM's own example dashboard charts beyond the latencies: where a request's time goes once
# scheduled, and how long requests are. (title, histogram, unit, question)
PHASES_AND_SIZES = (
    ("Prefill time", "vllm:request_prefill_time_seconds", "s",
     "Time requests spend in prefill, reading the prompt until their first token."),
    ("Decode time", "vllm:request_decode_time_seconds", "s",
     "Time requests spend in decode, generating after their first token."),
    ("Prompt length", "vllm:request_prompt_tokens", "short", "Prompt tokens per request: the prefill work."),
    ("Generation length", "vllm:request_generation_tokens", "short", "Tokens generated per request."),
    ("Max generation tokens", "vllm:request_max_num_generation_tokens", "short",
     "Per request, the most tokens any of its n sequences generated (with n = 1, its generation length)."),
)


def _alert_line(spec: Spec, threshold: str, colour: str = RED) -> tuple[tuple[float, str], ...]:
    """The operational alert's threshold as a line, where the spec has operational alerts."""
    return ((getattr(spec.operational, threshold), colour),) if spec.operational is not None else ()


def uid(spec: Spec, name: str) -> str:
    return f"slo-sidecar-{spec.service}-{name}"[:40]


# The dashboard variable each identity label is filtered by, where there is one.
IDENTITY_VARIABLES = {"namespace": "$namespace", "model_name": "$model_name"}
# The dashboard variable each slice label of a sliced SLO is filtered by (its recordings carry the label).
SLICE_VARIABLES = {"model": "$model"}


def _slo_selector_static(spec: Spec, slo: Slo) -> str:
    """The SLO's metadata rules (objective, budget), which carry no service identity."""
    return f'sloth_service="{spec.service}", sloth_slo="{slo.name}"'


def _identity_picks(spec: Spec) -> str:
    return "".join(f', {label}=~"{IDENTITY_VARIABLES[label]}"' for label in spec.identity
                   if label in IDENTITY_VARIABLES)


def _slice_picks(slo: Slo, either: str = "") -> str:
    """The tenants the dashboard picks, for a sliced SLO only: an unsliced SLO's series have no `model`,
    and `model=~"medical"` would hide them. `either="|"` also keeps series that lack the label."""
    return "".join(f', {label}=~"{SLICE_VARIABLES[label]}{either}"' for label in slo.slice if label in SLICE_VARIABLES)


def _slo_selector(spec: Spec, slo: Slo) -> str:
    """The SLO's recording rules, for the services (and, for a sliced SLO, the tenants) the variables pick."""
    return _slo_selector_static(spec, slo) + _identity_picks(spec) + _slice_picks(slo)


def _alerts_selector(spec: Spec, slo: Slo) -> str:
    """The SLO's firing alerts: a sliced SLO's tenant matcher also keeps alerts without a `model` (an
    absent() alert has only the labels its rule gives it)."""
    return _slo_selector_static(spec, slo) + _identity_picks(spec) + _slice_picks(slo, either="|")


def _legend(spec: Spec, suffix: str = "", slo: Slo | None = None) -> str:
    """Which service (and, for a sliced SLO, tenant) a series is: one line each in a shared Prometheus."""
    who = "/".join(f"{{{{{label}}}}}" for label in (*spec.identity, *(slo.slice if slo else ())))
    return " ".join(part for part in (who, suffix) if part)


def _by_name(spec: Spec) -> dict[str, list[Slo]]:
    """The spec's SLOs by name: a sliced SLO's slices share one, and one row (alerts link rows by name)."""
    groups: dict[str, list[Slo]] = {}
    for slo in spec.slos:
        groups.setdefault(slo.name, []).append(slo)
    return groups


def _objectives(slos: list[Slo]) -> str:
    low, high = min(slo.objective for slo in slos), max(slo.objective for slo in slos)
    return f"{low:g}%" if low == high else f"{low:g}% to {high:g}% by tenant (the Tenants table has each)"


def _slo_row(spec: Spec, slos: list[Slo]) -> tuple[str, tuple[Panel, ...]]:
    """One SLO's panels; for a sliced SLO, every picked tenant's series in each (the objective line:
    the loosest of their objectives)."""
    slo = slos[0]
    selector = _slo_selector(spec, slo)
    stat_legend = _legend(spec, "", slo) if slo.slice else ""
    objective = min(s.objective_ratio for s in slos)
    budgets = [f"{budget * 100:.3g}%" for budget in sorted({s.error_budget for s in slos})]
    burn_lines = tuple(sorted({(factor, RED if tier == "page" else ORANGE) for tier, _, _, factor in BURN_ALERTS_30D}))
    windows = [duration_label(w) for w in slo.windows() if w != slo.period_s]
    return (f"{slo.name}: {slo.description}", (*_slice_strip(spec, slo),
        Panel("SLI over the period", f"Share of good events over {slo.period}; the objective is {_objectives(slos)}.",
              (Query(f"1 - slo:sli_error:ratio_rate{slo.period}{{{selector}}}", stat_legend),), "percentunit", "stat",
              thresholds=((0, RED), (objective, "green")), width=6),
        Panel("Error budget remaining", f"Share of the {slo.period} error budget "
              f"({' to '.join(budgets)} of events) not yet spent.",
              (Query(f"slo:period_error_budget_remaining:ratio{{{selector}}}", stat_legend),), "percentunit", "stat",
              thresholds=((-1e9, RED), (0, ORANGE), (0.25, "green")), width=6),
        Panel("Firing alerts", "Page and ticket alerts of this SLO firing now.",
              (Query(f'count(ALERTS{{{_alerts_selector(spec, slo)}, alertstate="firing"}}) or vector(0)'),),
              "short", "stat", thresholds=((1, RED),), width=6),
        Panel("Current burn rate", "Error ratio over the shortest window divided by the budget: 1 spends "
              "the budget exactly over the period.",
              (Query(f"slo:current_burn_rate:ratio{{{selector}}}", stat_legend),), "short", "stat",
              thresholds=((1, ORANGE), (BURN_ALERTS_30D[0][3], RED)), width=6),
        Panel("Error budget burn-down", "The budget left over the period; below 0 the SLO is missed.",
              (Query(f"slo:period_error_budget_remaining:ratio{{{selector}}}", _legend(spec, "remaining", slo)),),
              "percentunit", thresholds=((0, RED),), threshold_lines=True),
        Panel("Burn rate by window", "Each alert window's burn rate, with the page (14.4x, 6x) and ticket "
              "(3x, 1x) lines: an alert fires when both its windows cross its line.",
              tuple(Query(_burn_rate(w, selector, f"slo:error_budget:ratio{{{_slo_selector_static(spec, slo)}"
                                                  f"{_slice_picks(slo)}}}"),
                          _legend(spec, w, slo)) for w in windows), "short",
              thresholds=burn_lines, threshold_lines=True, min=0),
    ))


def _slice_strip(spec: Spec, slo: Slo) -> tuple[Panel, ...]:
    """A time-slice SLO's slices, good (green) or bad (red), one row per service; none for other SLOs."""
    timeslices = slo.sli.timeslices
    if timeslices is None:
        return ()
    slice_ = duration_label(timeslices.slice_s)
    return (Panel(f"Slices ({slice_}): good and bad",
                  f"Each {slice_} slice: good when it met {timeslices.condition}, bad when it did not"
                  + (" or had no data" if timeslices.no_data == "bad" else "; a slice with no data is left out")
                  + f". The objective: {_objectives([slo])} of the slices good over {slo.period}.",
                  (Query(f"{TIMESLICE_GOOD}{{{_slo_selector(spec, slo)}}}", _legend(spec, "", slo)),), "short",
                  "state-timeline", thresholds=((0, RED), (1, "green")), min=0, max=1, width=24,
                  states=((1, "good", "green"), (0, "bad", RED))),)


def _burn_rate(window: str, selector: str, budget: str) -> str:
    """The error ratio over the window over the error budget (`budget`: one series per SLO), with the
    ratio's series' labels."""
    return (f"slo:sli_error:ratio_rate{window}{{{selector}}}\n/ on (sloth_id, sloth_service, sloth_slo) "
            f"group_left\n{budget}")


# --- the fleet table ---------------------------------------------------------------------------------

FLEET_ROW = "Fleet: which service is burning"
SLO_JOIN = ("sloth_id", "sloth_service", "sloth_slo")  # what tells one SLO (a sliced SLO's one slice) apart
LABEL_TITLES = {"namespace": "Namespace", "model_name": "Service model", "sloth_slo": "SLO", "model": "Tenant"}


def _fleet_rows(spec: Spec) -> tuple[str, ...]:
    """A fleet table row's labels: the service (its identity), the SLO, and the tenant where SLOs are sliced."""
    slices = sorted({label for slo in spec.slos for label in slo.slice})
    return (*spec.identity, "sloth_slo", *slices)


def _per_row(aggregation: str, spec: Spec, expr: str) -> str:
    """One series per fleet table row, however many series (a duplicate rule, a second rule file) feed it."""
    return f"{aggregation} by ({', '.join(_fleet_rows(spec))}) ({expr})"


def _per_slo(recording: str, selector: str) -> str:
    """An SLO's metadata recording, one series per SLO (the "one" side of a join, where a duplicate would fail it)."""
    return f"max by ({', '.join(SLO_JOIN)}) ({recording}{{{selector}}})"


def _page_window(slo: Slo) -> str:
    """The long window of the fastest page tier: 1h at a 30-day period."""
    return duration_label(max((a for a in slo.burn_alerts() if a.tier == "page"), key=lambda a: a.factor).long_s)


def fleet_row(spec: Spec) -> tuple[str, tuple[Panel, ...]]:
    """Every service's every SLO (and tenant, for a sliced SLO), highest burn rate now first, whatever the
    variables pick: the dashboard's first question on a fleet, which service is burning. Each row links
    to this dashboard on its service.

    Reads only the SLO recordings, a few series per service and SLO whatever the pod count, each
    aggregated to one series per row, so a duplicate cannot double a row. One row per (service, SLO) rather
    than per service: SLOs differ in objective and budget, and a service's second burning SLO stays in
    sight; the sort puts the worst first."""
    selector = f'sloth_service="{spec.service}"'
    windows: dict[str, list[str]] = {}
    for slo in spec.slos:
        windows.setdefault(_page_window(slo), []).append(slo.name)
    page = "\nor\n".join(  # one window for all SLOs of one period length
        _burn_rate(window, selector + (f', sloth_slo=~"{"|".join(sorted(set(names)))}"' if len(windows) > 1 else ""),
                   _per_slo("slo:error_budget:ratio", selector))
        for window, names in sorted(windows.items()))
    page_title = f"Burn {next(iter(windows))}" if len(windows) == 1 else "Burn over the page window"
    rows = _fleet_rows(spec)
    objective = (f"{_per_slo('slo:objective:ratio', selector)}\n* on ({', '.join(SLO_JOIN)}) group_right ()\n"
                 f"group by ({', '.join(dict.fromkeys((*SLO_JOIN, *rows)))}) "
                 f"(slo:current_burn_rate:ratio{{{selector}}})")
    queries = (
        Query(f"sort_desc({_per_row('max', spec, f'slo:current_burn_rate:ratio{{{selector}}}')})", "Burn now",
              instant=True, unit="short"),
        Query(_per_row("max", spec, page), page_title, instant=True, unit="short"),
        Query(_per_row("min", spec, f"slo:period_error_budget_remaining:ratio{{{selector}}}"), "Budget left",
              instant=True),
        Query(_per_row("max", spec, objective), "Objective", instant=True),
    )
    linked = tuple(label for label in spec.identity if label in IDENTITY_VARIABLES)
    table = Panel(
        "Burn rate by service and SLO", "Every service's SLOs (each tenant's, for a sliced SLO), whatever the "
        "dashboard's variables pick, highest burn rate first: burn now (the page alerts' short window), burn "
        "over the fastest page tier's long window, the error budget left over the period, and the objective. "
        "A burn of 1 spends the budget exactly over the period; a row opens this dashboard on its service.",
        queries, "percentunit", "table", width=24,
        label_columns=tuple((label, LABEL_TITLES.get(label, label)) for label in rows), sort_by="Burn now",
        sort_desc=True, links=(("Open this service", row_link(uid(spec, "slo"), linked)),) if linked else ())
    return (FLEET_ROW, (table,))


# --- the Tenants table -------------------------------------------------------------------------------

TABLE_ROWS = ("sloth_slo", "model")  # every query of the table is one series per (SLO, tenant): Grafana merges them


def _sliced(spec: Spec) -> list[Slo]:
    return [slo for slo in spec.slos if "model" in slo.slice]


def _table_selector(spec: Spec, slos: list[Slo], identity: bool = True) -> str:
    """The sliced SLOs' recordings (all carry `model`), for the picked tenants and services. SLO names are
    `[a-z][a-z0-9_-]*`: nothing in them is special in a regular expression."""
    names = "|".join(sorted({slo.name for slo in slos}))
    picks = _identity_picks(spec) if identity else ""
    return f'sloth_service="{spec.service}", sloth_slo=~"{names}"{picks}, {TENANT}'


def _per_slo_tenant(aggregation: str, recording: str, selector: str) -> str:
    """One series per (SLO, tenant): the worst of the picked services' (max error, min budget left)."""
    return f"{aggregation} by ({', '.join(TABLE_ROWS)}) ({recording}{{{selector}}})"


def _on_every_row(spec: Spec, slos: list[Slo], per_tenant: str) -> str:
    """A per-tenant value (by model) copied onto each of the tenant's (SLO, tenant) rows."""
    rows = _per_slo_tenant("max", "slo:objective:ratio", _table_selector(spec, slos, identity=False))
    return f"{rows} * 0\n+ on (model) group_left ()\n{per_tenant}"


def _sli_over_period(spec: Spec, slos: list[Slo]) -> str:
    """1 - the error ratio over each SLO's own period: one recording per period length, joined by `or`."""
    periods = sorted({(slo.period_s, slo.period) for slo in slos})
    return "\nor\n".join(
        "1 - " + _per_slo_tenant("max", f"slo:sli_error:ratio_rate{period}",
                                 _table_selector(spec, [slo for slo in slos if slo.period == period]))
        for _, period in periods)


def _goodput(spec: Spec) -> str | None:
    """Per tenant: the share of requests the engine judged good against the goodput SLO's targets, over
    the dashboard's time range; None without an exact goodput SLO."""
    slo = next((slo for slo in spec.slos if slo.sli.kind == "goodput" and slo.sli.targets), None)
    if slo is None:
        return None
    judged = f'{SLO_COUNTER}{{slo="{slo.name}", {MODEL}, {TENANT}}}'
    good = f'{SLO_COUNTER}{{slo="{slo.name}", good="true", {MODEL}, {TENANT}}}'
    return f"(sum by (model) (increase({good}[$__range]))\n/\nsum by (model) (increase({judged}[$__range])))"


def _tenant_cost_per_million() -> str:
    """Per tenant, across the picked pods: their cost per hour over their millions of tokens per hour (each
    pod's is its cost per hour over its cost per million tokens), so a busy pod weighs more than an idle one."""
    per_hour = f"sidecar_tenant_cost_usd_per_hour{{{POD}, {TENANT}}}"
    per_million = f"sidecar_tenant_cost_usd_per_million_tokens{{{POD}, {TENANT}}}"
    return f"(sum by (model) ({per_hour})\n/\nsum by (model) ({per_hour} / {per_million}))"


def tenants_row(spec: Spec) -> tuple[str, tuple[Panel, ...]] | None:
    """One table row per (sliced SLO, tenant), worst budget first; None for a spec without sliced SLOs.

    Its rows come from the sliced SLOs' recordings, the only per-tenant SLO series: without slices the
    SLO columns would be empty, and the engine's per-tenant traffic is on the engine dashboard's Tenants
    row. Goodput and cost are per tenant, copied onto each of a tenant's rows."""
    slos = _sliced(spec)
    if not slos:
        return None
    selector = _table_selector(spec, slos)
    queries = [
        Query(_per_slo_tenant("max", "slo:objective:ratio", _table_selector(spec, slos, identity=False)),
              "Objective", instant=True),
        Query(_sli_over_period(spec, slos), "SLI over the period", instant=True),
        Query(_per_slo_tenant("min", "slo:period_error_budget_remaining:ratio", selector), "Budget left",
              instant=True),
        Query(_per_slo_tenant("max", "slo:current_burn_rate:ratio", selector), "Burn now", instant=True,
              unit="short"),
    ]
    goodput = _goodput(spec)
    if goodput is not None:
        queries.append(Query(_on_every_row(spec, slos, goodput), "Goodput", instant=True))
    queries.append(Query(_on_every_row(spec, slos, _tenant_cost_per_million()), "Cost per 1M tokens", instant=True,
                         unit="currencyUSD"))
    table = Panel("SLOs by tenant", "Each sliced SLO for each tenant, least error budget left first: objective, "
                  "SLI over the period, budget left and burn now (the worst of the picked services), the share of "
                  "requests that met the goodput targets over the time range, and the tenant's GPU cost per "
                  "million tokens.", tuple(queries), "percentunit", "table", width=24,
                  label_columns=(("sloth_slo", "SLO"), ("model", "Tenant")), sort_by="Budget left")
    return ("Tenants", (table,))


RELEASES_ROW = "Releases: the error-budget policy"


def releases_row(spec: Spec) -> tuple[str, tuple[Panel, ...]] | None:
    """Whether the error-budget policy holds releases back, per service and why; None where no SLO has a
    policy (docs/rolling-out.md)."""
    if not any(slo.policy for slo in spec.slos):
        return None
    selector = f'sloth_service="{spec.service}"' + _identity_picks(spec)
    frozen = Panel("Releases frozen", "1 (red) while the service's error-budget policy holds releases back, the "
                   "reason in the legend: budget (an SLO has less budget left than its policy allows) or burn (an "
                   "SLO burns faster than its policy allows); 0 while releases may go. `slo-sidecar budget` "
                   "answers the same for a pipeline.",
                   (Query(f"1 - {RELEASE_ALLOWED}{{{selector}}}", _legend(spec, "{{reason}}")),), "short", "stat",
                   thresholds=((1, RED),), min=0, max=1, width=24)
    return (RELEASES_ROW, (frozen,))


def slo_overview(spec: Spec) -> Dashboard:
    tenants = tenants_row(spec)
    releases = releases_row(spec)
    rows = (fleet_row(spec), *((releases,) if releases else ()), *((tenants,) if tenants else ()),
            *(_slo_row(spec, slos) for slos in _by_name(spec).values()))
    return Dashboard(uid(spec, "slo"), f"{spec.service} / SLOs", "Objectives, error budgets and burn rates.",
                     rows, variables=TENANT_VARIABLES)


def _latency_threshold(spec: Spec, histogram: str) -> tuple[tuple[float, str], ...]:
    """The SLO thresholds on this histogram (orange), and the operational P99 alert for TTFT (red)."""
    steps = {(slo.sli.threshold_s, ORANGE) for slo in spec.slos if slo.sli.histogram == histogram}
    if histogram == "vllm:time_to_first_token_seconds":
        steps.update(_alert_line(spec, "latency_p99_alert_s"))
    return tuple(sorted(steps))


def _quantiles(histogram: str, selector: str, exemplars: bool = False) -> tuple[Query, ...]:
    return tuple(Query(f"histogram_quantile({q}, sum by (le) (rate({histogram}_bucket{{{selector}}}"
                       f"[$__rate_interval])))", f"p{int(q * 100)}", exemplars=exemplars) for q in (0.5, 0.9, 0.99))


def engine(spec: Spec) -> Dashboard:
    latency_panels = tuple(
        Panel(title, question + " P50, P90 and P99 over the rate interval.",
              _quantiles(histogram, MODEL), "s", thresholds=_latency_threshold(spec, histogram),
              threshold_lines=True, min=0)
        for title, histogram, question in LATENCIES)
    # vLLM's histograms carry no exemplars; the engine's HTTP histogram carries each request's trace id.
    traced = Panel("Request duration, with traces", "Whole generation requests as the HTTP server timed them, "
                   "streams included. Each exemplar dot is one request: it opens the request's trace in Jaeger.",
                   _quantiles(HTTP_DURATION_HISTOGRAM, f"{GENERATION}, {POD}", exemplars=True), "s",
                   thresholds=_latency_threshold(spec, HTTP_DURATION_HISTOGRAM), threshold_lines=True, min=0, width=24)
    return Dashboard(uid(spec, "engine"), f"{spec.service} / Inference engine",
                     "Traffic, latency, tokens and the scheduler of the vLLM engine.", (
        ("Traffic", (
            Panel("Requests by status", "What the API answers, per second, by HTTP status.",
                  (Query(f"sum by (code) (rate(slo_engine_http_requests_total{{{GENERATION}, {POD}, {TENANT}}}"
                         f"[$__rate_interval]))", "{{code}}"),), "reqps", min=0),
            Panel("Error ratio", "Share of generation requests answered 5xx.",
                  (Query(f'sum(rate(slo_engine_http_requests_total{{{GENERATION}, code=~"5..", {POD}, {TENANT}}}'
                         f"[$__rate_interval]))\n/\nsum(rate(slo_engine_http_requests_total{{{GENERATION}, {POD}, "
                         f"{TENANT}}}[$__rate_interval]))", "5xx"),), "percentunit",
                  thresholds=_alert_line(spec, "error_ratio_alert"), threshold_lines=True, min=0),
        )),
        ("Latency", (*latency_panels, traced)),
        ("Tokens and scheduler", (
            Panel("Tokens per second", "Prompt tokens processed and tokens generated.",
                  (Query(f"sum(rate(vllm:prompt_tokens_total{{{MODEL}}}[$__rate_interval]))", "prompt"),
                   Query(f"sum(rate(vllm:generation_tokens_total{{{MODEL}}}[$__rate_interval]))", "generation")),
                  "short", min=0),
            Panel("Running and waiting requests", "The batch being decoded and the queue behind it.",
                  (Query(f"sum(vllm:num_requests_running{{{MODEL}}})", "running"),
                   Query(f"sum(vllm:num_requests_waiting{{{MODEL}}})", "waiting (queue depth)")),
                  "short", min=0),
            Panel("Queue fill", "Waiting requests over the queue the engine admits: past 100%, clients get 429.",
                  (Query(f"sum(vllm:num_requests_waiting{{{MODEL}}})\n/\n"
                         f"sum(slo_engine_max_waiting_requests{{{POD}}})", "waiting / admitted"),),
                  "percentunit", thresholds=_alert_line(spec, "queue_full_ratio_alert"), threshold_lines=True,
                  min=0),
            Panel("KV cache usage", "Share of the KV cache in use; near full, vLLM preempts.",
                  (Query(f"max(vllm:kv_cache_usage_perc{{{MODEL}}})", "used"),), "percentunit",
                  thresholds=_alert_line(spec, "kv_cache_high_ratio"), threshold_lines=True, min=0, max=1),
            Panel("Preemptions", "Sequences evicted and recomputed for lack of KV cache, per second.",
                  (Query(f"sum(rate(vllm:num_preemptions_total{{{MODEL}}}[$__rate_interval]))", "preemptions"),),
                  "short", thresholds=_alert_line(spec, "preemptions_per_second_alert"), threshold_lines=True, min=0),
            Panel("Batch size", "Tokens per engine step (mean): how well batching fills the accelerator.",
                  (Query(f"sum(rate(vllm:iteration_tokens_total_sum{{{MODEL}}}[$__rate_interval]))\n/\n"
                         f"sum(rate(vllm:iteration_tokens_total_count{{{MODEL}}}[$__rate_interval]))", "tokens/step"),),
                  "short", min=0),
        )),
        ("Phases and sizes", (*_phase_and_size_panels(spec), _finish_reasons())),
        ("Tenants", _tenant_panels(spec)),
    ), variables=TENANT_VARIABLES)


def _phase_and_size_panels(spec: Spec) -> tuple[Panel, ...]:
    return tuple(Panel(title, question + " P50, P90 and P99 over the rate interval.", _quantiles(histogram, MODEL),
                       unit, thresholds=_latency_threshold(spec, histogram), threshold_lines=True, min=0)
                 for title, histogram, unit, question in PHASES_AND_SIZES)


def _finish_reasons() -> Panel:
    return Panel("Finish reasons", "Why requests ended, per second: stop (a stop token or string), length "
                 "(max_tokens or the context), abort, error, repetition.",
                 (Query(f"sum by (finished_reason) (rate(vllm:request_success_total{{{MODEL}}}[$__rate_interval]))",
                        "{{finished_reason}}"),), "reqps", min=0)


def _by_tenant(metric: str, selector: str) -> str:
    return f"sum by (model) (rate({metric}{{{selector}}}[$__rate_interval]))"


def _tenant_panels(spec: Spec) -> tuple[Panel, ...]:
    """The engine's per-tenant counters (`model`: the served name a request asked for, "unknown" when it
    named none), for the tenants `$model` picks."""
    requests, tenant = f"{GENERATION}, {POD}, {TENANT}", f"{POD}, {TENANT}"
    failed = f'{requests}, code=~"5.."'
    generated = _by_tenant(GENERATION_TOKENS, tenant)
    return (
        Panel("Requests by tenant", "Generation requests per second, by the model or adapter they asked for.",
              (Query(_by_tenant(HTTP_REQUESTS, requests), "{{model}}"),), "reqps", min=0),
        Panel("Error ratio by tenant", "Share of each tenant's generation requests answered 5xx.",
              (Query(f"{_by_tenant('slo_engine_http_requests_total', failed)}\n/\n"
                     f"{_by_tenant('slo_engine_http_requests_total', requests)}", "{{model}}"),), "percentunit",
              thresholds=_alert_line(spec, "error_ratio_alert"), threshold_lines=True, min=0),
        Panel("Tokens by tenant", "Prompt tokens read and tokens generated per second, by tenant: what each "
              "tenant's share of the GPU, and so of its cost, is.",
              (Query(_by_tenant(PROMPT_TOKENS, tenant), "{{model}} prompt"),
               Query(generated, "{{model}} generated")), "short", min=0),
        Panel("Goodput by tenant", "Share of each tenant's generated tokens from requests that met every exact "
              "latency and goodput target of the spec.",
              (Query(f"{_by_tenant(GOODPUT_TOKENS, tenant)}\n/\n{generated}", "{{model}}"),), "percentunit",
              min=0, max=1),
        Panel("LoRA cold starts", "Requests per minute whose adapter had to be loaded first, by adapter: "
              "more than --max-loras adapters in turn. 0 for the base model, which never loads.",
              (Query(f"{_by_tenant('slo_engine_lora_cold_starts_total', tenant)} * 60\nor\n"
                     f"{_by_tenant('slo_engine_http_requests_total', requests)} * 0", "{{model}}"),), "short", min=0),
    )


def gpu(spec: Spec) -> Dashboard:
    by_gpu = "gpu {{gpu}}"
    return Dashboard(uid(spec, "gpu"), f"{spec.service} / GPU", "Every GPU of the pod, from NVML via the sidecar.", (
        ("Load and memory", (
            Panel("GPU utilisation", "Share of time a kernel ran.",
                  (Query(f"sidecar_gpu_utilization_ratio{{{POD}}}", by_gpu),), "percentunit",
                  thresholds=_alert_line(spec, "gpu_utilization_low", "green"), min=0, max=1),
            Panel("Memory used", "Device memory in use, against the total.",
                  (Query(f"sidecar_gpu_memory_used_bytes{{{POD}}}", "used, " + by_gpu),
                   Query(f"sidecar_gpu_memory_total_bytes{{{POD}}}", "total, " + by_gpu)), "bytes", min=0),
            Panel("Memory used share", "Used over total; vLLM takes its configured share on purpose, so "
                  "a full GPU is normal: KV-cache usage and preemptions say when memory runs short.",
                  (Query(f"sidecar_gpu_memory_used_bytes{{{POD}}} / sidecar_gpu_memory_total_bytes{{{POD}}}",
                         by_gpu),), "percentunit", min=0, max=1),
            Panel("Engine's GPU memory", "Memory held by the engine's processes, and by anyone else.",
                  (Query(f"sidecar_gpu_engine_process_memory_bytes{{{POD}}}", "engine, " + by_gpu),
                   Query(f"sidecar_gpu_other_process_memory_bytes{{{POD}}}", "others, " + by_gpu)), "bytes", min=0),
        )),
        ("Health", (
            Panel("Temperature", "GPU core temperature.",
                  (Query(f"sidecar_gpu_temperature_celsius{{{POD}}}", by_gpu),), "celsius",
                  thresholds=_alert_line(spec, "gpu_temperature_high_celsius"), threshold_lines=True),
            Panel("Power", "Power draw against the enforced limit.",
                  (Query(f"sidecar_gpu_power_watts{{{POD}}}", "draw, " + by_gpu),
                   Query(f"sidecar_gpu_power_limit_watts{{{POD}}}", "limit, " + by_gpu)), "watt", min=0),
            Panel("Clocks", "SM and memory clocks.",
                  (Query(f"sidecar_gpu_sm_clock_hertz{{{POD}}}", "SM, " + by_gpu),
                   Query(f"sidecar_gpu_memory_clock_hertz{{{POD}}}", "memory, " + by_gpu)), "hertz", min=0),
            Panel("Throttle reasons", "Which clocks-event reasons are active (1).",
                  (Query(f"max by (gpu, reason) (sidecar_gpu_clock_throttle_reason_active{{{POD}}})",
                         "{{reason}}, " + by_gpu),), "short", min=0, max=1),
            Panel("XID errors", "XID critical errors per interval (0 is healthy).",
                  (Query(f"sum by (gpu, xid) (increase(sidecar_gpu_xid_errors_total{{{POD}}}[$__rate_interval]))"
                         f" or sum by (gpu) (sidecar_gpus{{{POD}}} * 0)", "xid {{xid}}, " + by_gpu),), "short",
                  thresholds=((1, RED),), threshold_lines=True, min=0),
        )),
    ))


def cost(spec: Spec) -> Dashboard:
    return Dashboard(uid(spec, "cost"), f"{spec.service} / Cost and capacity",
                     "What tokens cost at the configured GPU price, and how much room is left.", (
        ("Cost", (
            Panel("Cost per 1M generated tokens", "GPU cost of a million generated tokens at the current rate.",
                  (Query(f"sidecar_cost_usd_per_million_generated_tokens{{{POD}}}", "{{pod}}"),), "currencyUSD",
                  min=0),
            Panel("Tokens per GPU-hour", "Generated tokens one GPU-hour buys at the current rate.",
                  (Query(f"sidecar_generated_tokens_per_gpu_hour{{{POD}}}", "{{pod}}"),), "short", min=0),
        )),
        ("Capacity", (
            Panel("Headroom", "What is left before the queue grows: idle GPU time and free KV cache.",
                  (Query(f"1 - avg(sidecar_gpu_utilization_ratio{{{POD}}})", "GPU idle"),
                   Query(f"1 - max(vllm:kv_cache_usage_perc{{{MODEL}}})", "KV cache free")), "percentunit",
                  min=0, max=1),
            Panel("Pod cost per hour", "The pod's GPUs at the configured price.",
                  (Query(f"sum(sidecar_cost_usd_per_hour{{{POD}}})", "USD/h"),), "currencyUSD", "stat"),
        )),
    ))


def dashboards(spec: Spec) -> list[Dashboard]:
    return [slo_overview(spec), engine(spec), gpu(spec), cost(spec)]


def all_panel_queries(spec: Spec) -> list[PanelQuery]:
    """Every panel query of every dashboard, with its dashboard and panel title, as Prometheus receives it
    from Grafana with every variable on All ($__rate_interval 1m, $__interval 15s, $__range 1h: see
    `model.panel_queries`): for a benchmark to run and time against a real Prometheus."""
    return panel_queries(dashboards(spec))
