"""The HTTP server's own Prometheus metrics, next to vLLM's `vllm:*` ones.

vLLM registers its metrics in prometheus-client's default registry of this
process; ours go there too, so one /metrics serves both. Label values are
bounded: endpoints are route templates (unknown paths read "other") and error
reasons come from a fixed list, pre-created at zero so rate() and absent()
work from the first scrape.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Callable, Iterable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics import exposition as openmetrics_exposition

from slo_sidecar.spec.buckets import HTTP_DURATION_BUCKETS
from slo_sidecar.spec.model import (
    ACCELERATOR_INFO,
    ENGINE_READY,
    GENERATION_ENDPOINTS,
    GENERATION_TOKENS,
    HTTP_REQUESTS,
    PROMPT_TOKENS,
    TENANT_LABEL,
)

PREFIX = "slo_engine_"

ENDPOINTS = (
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/models",
    "/tokenize",
    "/detokenize",
    "/version",
    "/health",
    "/ready",
    "/metrics",
    "other",
)
# Every status a generation endpoint answers with, pre-created at zero on both: an SLI that
# selects errors (5xx, 429) exists, and reads 0, before the first error, and rate() counts
# that first error instead of starting the series at 1.
GENERATION_CODES = ("200", "400", "401", "404", "408", "413", "429", "499", "500", "503", "504")

# Why a request failed; one bounded label.
ERROR_REASONS = (
    "validation",         # 4xx: malformed or out-of-range input, unknown model, body too large
    "unauthorized",       # 401: missing or wrong API key
    "overload",           # 429: admission limit on waiting requests reached
    "unavailable",        # 503: model still loading, or draining for shutdown
    "engine_error",       # 5xx: vLLM failed the request (or an injected fault did)
    "client_disconnect",  # the client went away before the response was complete
    "timeout",            # 504: the request ran past --request-timeout-s
)

# The tenant of a generation request that never named a served model (unreadable body, unknown
# model, refused before its body was read): a fixed value, so no string from a request is a label.
UNKNOWN_MODEL = "unknown"

# Status recorded when no response reached the client (nginx's convention).
CLIENT_CLOSED_REQUEST = 499

# From 5 ms to 10 min: LLM requests span four orders of magnitude.
# The spec module owns the bounds: a latency SLO on this histogram must use one of them.
DURATION_BUCKETS = HTTP_DURATION_BUCKETS


class ConstantLabels:
    """prometheus_client collector: every family of `registry`, each sample with `labels` added.

    The engine's own series carry the served model's name as `model_name`, as vLLM's do, so
    an SLO can be scoped to one service (namespace and model) without a label taken from any
    request: one process serves one model, so the value is a constant of the process.

    No `*_created` series, whatever prometheus_client's setting (inside a user's own vLLM server
    it is theirs): in the text format each is a series of its own, read by no rule or panel.
    """

    def __init__(self, registry: CollectorRegistry, labels: dict[str, str]):
        self.registry = registry
        self.labels = labels

    def collect(self) -> Iterable[Metric]:
        for family in self.registry.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [sample._replace(labels={**sample.labels, **self.labels}) for sample in family.samples
                                if not sample.name.endswith("_created")]
            yield labelled


class ServerMetrics:
    """The API server's series. `models` are the served names (the base model's, then each LoRA
    adapter's): the only values of the `model` label, the tenant a generation request asked for.
    Requests on other endpoints carry model="" (no tenant)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY, max_waiting_requests: int | None = 0,
                 models: tuple[str, ...] = ()):
        self.models = (*models, UNKNOWN_MODEL)
        self.requests = Counter(
            HTTP_REQUESTS.removesuffix("_total"),
            "HTTP requests handled, by endpoint, status code (499: client closed the request) and tenant "
            "(the served model or adapter a generation request named; empty on other endpoints).",
            ["endpoint", "code", TENANT_LABEL], registry=registry,
        )
        self.in_flight = Gauge(
            PREFIX + "http_requests_in_flight",
            "HTTP requests being handled now, by endpoint.",
            ["endpoint"], registry=registry,
        )
        self.duration = Histogram(
            PREFIX + "http_request_duration_seconds",
            "Time from receiving a request to its last byte, streamed responses included.",
            ["endpoint"], buckets=DURATION_BUCKETS, registry=registry,
        )
        self.errors = Counter(
            PREFIX + "request_errors",
            "Failed requests, by reason and tenant.",
            ["reason", TENANT_LABEL], registry=registry,
        )
        # Tokens per tenant: vLLM counts them for the whole engine only, and the sidecar apportions
        # the pod's cost by them (prompt tokens as the tokenizer counted them, once per request).
        self.prompt_tokens = Counter(
            PROMPT_TOKENS.removesuffix("_total"),
            "Prompt tokens of finished generation requests, by tenant.",
            [TENANT_LABEL], registry=registry,
        )
        self.generation_tokens = Counter(
            GENERATION_TOKENS.removesuffix("_total"),
            "Tokens generated for finished generation requests (all their choices), by tenant.",
            [TENANT_LABEL], registry=registry,
        )
        # A request for an adapter that was not in vLLM's adapter cache waits for it to load from disk.
        self.lora_cold_starts = Counter(
            PREFIX + "lora_cold_starts",
            "Generation requests whose LoRA adapter had to be loaded first (not among the --max-loras "
            "adapters used most recently), by tenant.",
            [TENANT_LABEL], registry=registry,
        )
        self.ready = Gauge(
            ENGINE_READY,
            "1 when the model is loaded and the server accepts new requests, else 0.",
            registry=registry,
        )
        # The queue the engine admits (--max-waiting-requests): the queue-depth alert is a share of it. With no
        # limit (None) there is no series: a share of nothing is no alert, where a limit of 0 would read +Inf.
        if max_waiting_requests is not None:
            Gauge(PREFIX + "max_waiting_requests", "Requests the engine lets wait beyond those running before it "
                  "refuses more.", registry=registry).set(max_waiting_requests)
        self.accelerators = Gauge(
            ACCELERATOR_INFO,
            "1 for each GPU this engine can use (by NVML UUID): the pod's own, which the sidecar reports.",
            ["uuid"], registry=registry,
        )
        # For leak hunting (bench/soak.py): tasks still alive after their requests ended grow this.
        self.event_loop_tasks = Gauge(
            PREFIX + "event_loop_tasks",
            "asyncio tasks alive in the API server's event loop.",
            registry=registry,
        )
        for model in self.models:
            for reason in ERROR_REASONS:
                self.errors.labels(reason=reason, model=model)
            for endpoint in GENERATION_ENDPOINTS:
                for code in GENERATION_CODES:
                    self.requests.labels(endpoint=endpoint, code=code, model=model)
        for model in models:
            self.prompt_tokens.labels(model=model)
            self.generation_tokens.labels(model=model)
        for model in models[1:]:  # the adapters
            self.lora_cold_starts.labels(model=model)
        for endpoint in GENERATION_ENDPOINTS:
            self.in_flight.labels(endpoint=endpoint)
            self.duration.labels(endpoint=endpoint)

    def record_error(self, reason: str, model: str = "") -> None:
        if reason not in ERROR_REASONS:
            raise ValueError(f"unknown error reason {reason!r}")
        self.errors.labels(reason=reason, model=model).inc()

    def record_tokens(self, model: str, prompt_tokens: int, generation_tokens: int) -> None:
        self.prompt_tokens.labels(model=model).inc(prompt_tokens)
        self.generation_tokens.labels(model=model).inc(generation_tokens)


def drop_vllm_http_series(registry: CollectorRegistry) -> int:
    """Unregister the series vLLM's server gets from prometheus-fastapi-instrumentator (`http_requests_total`,
    `http_request_duration_seconds`, ...): ours count the same requests with the tenant, 499 and every status,
    and theirs add ~70 series a pod, more for each HTTP method a scanner tries. Only `slo-sidecar engine` asks
    for this; a user's own `vllm serve` keeps them (`--slo stock-vllm` reads them). prometheus_client lists a
    registry's collectors in a private field only: where it has none, nothing is dropped. Returns how many."""
    collectors = getattr(registry, "_collector_to_names", {})
    duplicates = [collector for collector, names in list(collectors.items())
                  if names and all(name.startswith("http_") for name in names)]
    for collector in duplicates:
        registry.unregister(collector)
    return len(duplicates)


OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def choose_exposition(accept: str) -> tuple[Callable[[CollectorRegistry], bytes], str]:
    """prometheus_client's content negotiation, with one correction.

    Its OpenMetrics writer (0.26) checks sample names against the label-name
    character set when escaping to underscores, so `vllm:num_requests_waiting`
    would go out as `vllm_num_requests_waiting` under a `# TYPE vllm:...` line,
    and every vllm:* query would find nothing. With allow-utf-8 escaping, names
    valid in the classic character set (all of ours and vLLM's) go out unchanged.
    """
    encoder, content_type = choose_encoder(accept)
    if content_type.startswith("application/openmetrics-text"):
        return partial(openmetrics_exposition.generate_latest, escaping=openmetrics_exposition.ALLOWUTF8), \
            OPENMETRICS_CONTENT_TYPE
    return encoder, content_type


async def exposition(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """(body, content type) of the registry in the format the scraper asked for, written off the event loop."""
    encoder, content_type = choose_exposition(accept)
    return await asyncio.get_running_loop().run_in_executor(None, encoder, registry), content_type
