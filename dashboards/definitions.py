"""The four dashboards, from the SLO spec: SLO overview, inference engine, GPU, cost and capacity.

Every threshold comes from the spec (SLO objectives and latency thresholds, the
operational alert thresholds, the burn factors), never typed here. Latency
percentiles are `histogram_quantile` over `sum by (le)` of `rate`, per the
Prometheus documentation (the reference design's queries skip both).
"""

from __future__ import annotations

from slo_spec.buckets import HTTP_DURATION_HISTOGRAM
from slo_spec.model import BURN_ALERTS_30D, Slo, Spec, duration_label

from .model import Dashboard, Panel, Query

POD = 'namespace=~"$namespace", pod=~"$pod"'
MODEL = POD + ', model_name=~"$model"'
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


def _alert_line(spec: Spec, threshold: str, colour: str = RED) -> tuple[tuple[float, str], ...]:
    """The operational alert's threshold as a line, where the spec has operational alerts."""
    return ((getattr(spec.operational, threshold), colour),) if spec.operational is not None else ()


def uid(spec: Spec, name: str) -> str:
    return f"slo-sidecar-{spec.service}-{name}"[:40]


# The dashboard variable each identity label is filtered by, where there is one.
IDENTITY_VARIABLES = {"namespace": "$namespace", "model_name": "$model"}


def _slo_selector_static(spec: Spec, slo: Slo) -> str:
    """The SLO's metadata rules (objective, budget), which carry no service identity."""
    return f'sloth_service="{spec.service}", sloth_slo="{slo.name}"'


def _slo_selector(spec: Spec, slo: Slo) -> str:
    """The SLO's recording rules, for the services the dashboard's variables pick."""
    picked = "".join(f', {label}=~"{IDENTITY_VARIABLES[label]}"' for label in spec.identity
                     if label in IDENTITY_VARIABLES)
    return _slo_selector_static(spec, slo) + picked


def _legend(spec: Spec, suffix: str = "") -> str:
    """Which service a series is, by its identity labels (one line per service in a shared Prometheus)."""
    who = "/".join(f"{{{{{label}}}}}" for label in spec.identity)
    return " ".join(part for part in (who, suffix) if part)


def slo_overview(spec: Spec) -> Dashboard:
    rows = []
    for slo in spec.slos:
        selector = _slo_selector(spec, slo)
        objective = slo.objective_ratio
        burn_lines = tuple(sorted({(factor, RED if tier == "page" else ORANGE)
                                   for tier, _, _, factor in BURN_ALERTS_30D}))
        windows = [duration_label(w) for w in slo.windows() if w != slo.period_s]
        rows.append((f"{slo.name}: {slo.description}", (
            Panel("SLI over the period", f"Share of good events over {slo.period}; the objective is "
                  f"{slo.objective:g}%.",
                  (Query(f"1 - slo:sli_error:ratio_rate{slo.period}{{{selector}}}"),), "percentunit", "stat",
                  thresholds=((0, RED), (objective, "green")), width=6),
            Panel("Error budget remaining", f"Share of the {slo.period} error budget "
                  f"({slo.error_budget * 100:.3g}% of events) not yet spent.",
                  (Query(f"slo:period_error_budget_remaining:ratio{{{selector}}}"),), "percentunit", "stat",
                  thresholds=((-1e9, RED), (0, ORANGE), (0.25, "green")), width=6),
            Panel("Firing alerts", "Page and ticket alerts of this SLO firing now.",
                  (Query(f'count(ALERTS{{{selector}, alertstate="firing"}}) or vector(0)'),), "short", "stat",
                  thresholds=((1, RED),), width=6),
            Panel("Current burn rate", "Error ratio over the shortest window divided by the budget: 1 spends "
                  "the budget exactly over the period.",
                  (Query(f"slo:current_burn_rate:ratio{{{selector}}}"),), "short", "stat",
                  thresholds=((1, ORANGE), (BURN_ALERTS_30D[0][3], RED)), width=6),
            Panel("Error budget burn-down", "The budget left over the period; below 0 the SLO is missed.",
                  (Query(f"slo:period_error_budget_remaining:ratio{{{selector}}}", _legend(spec, "remaining")),),
                  "percentunit", thresholds=((0, RED),), threshold_lines=True),
            Panel("Burn rate by window", "Each alert window's burn rate, with the page (14.4x, 6x) and ticket "
                  "(3x, 1x) lines: an alert fires when both its windows cross its line.",
                  tuple(Query(f"slo:sli_error:ratio_rate{w}{{{selector}}}\n/ on (sloth_id, sloth_service, sloth_slo) "
                              f"group_left\nslo:error_budget:ratio{{{_slo_selector_static(spec, slo)}}}",
                              _legend(spec, w)) for w in windows), "short",
                  thresholds=burn_lines, threshold_lines=True, min=0),
        )))
    return Dashboard(uid(spec, "slo"), f"{spec.service} / SLOs", "Objectives, error budgets and burn rates.",
                     tuple(rows))


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
                  (Query(f"sum by (code) (rate(slo_engine_http_requests_total{{{GENERATION}, {POD}}}"
                         f"[$__rate_interval]))", "{{code}}"),), "reqps", min=0),
            Panel("Error ratio", "Share of generation requests answered 5xx.",
                  (Query(f'sum(rate(slo_engine_http_requests_total{{{GENERATION}, code=~"5..", {POD}}}'
                         f"[$__rate_interval]))\n/\nsum(rate(slo_engine_http_requests_total{{{GENERATION}, {POD}}}"
                         f"[$__rate_interval]))", "5xx"),), "percentunit",
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
    ))


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
