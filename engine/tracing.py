"""OpenTelemetry tracing for the engine: set-up, and the per-request span tree.

Per request the trace is:

    POST /v1/chat/completions        SERVER   (HTTP semantic conventions)
    └── chat tiny-llama              INTERNAL (GenAI semantic conventions, event "first_token")
        ├── queue                    vLLM's queued time
        ├── prefill                  vLLM's prefill time
        └── decode                   vLLM's decode time, ending where vLLM reported the request finished

The middleware (engine/asgi.py) opens the SERVER span; the GenAI span and its three phases are drawn
once the request's HTTP view and vLLM's engine view (the stat-logger plugin's: how long it queued,
prefilled and decoded) are joined (engine/request_join.py).

Serving comes first: spans go through a bounded batch queue; when the queue is
full or the exporter fails, spans are dropped, counted, and logged once.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry import propagate
from prometheus_client import REGISTRY, CollectorRegistry, Counter

if TYPE_CHECKING:
    from .request_join import PendingRequest

log = logging.getLogger(__name__)


TRACER_NAME = "slo-sidecar.engine"
DEFAULT_SERVICE_NAME = "slo-sidecar-engine"
MAX_QUEUE_SIZE = 2048

# Downward-API variables the Kubernetes manifests set, as resource attributes.
K8S_ENV_ATTRIBUTES = {
    "POD_NAME": "k8s.pod.name",
    "POD_NAMESPACE": "k8s.namespace.name",
    "NODE_NAME": "k8s.node.name",
}


def sdk_disabled(environ: dict[str, str] | None = None) -> bool:
    return (environ if environ is not None else os.environ).get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def build_resource(service_version: str, model: str, environ: dict[str, str] | None = None) -> Resource:
    """Service, version, model and pod identity; OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME win."""
    environ = os.environ if environ is None else environ
    attributes: dict[str, Any] = {"service.version": service_version, "gen_ai.request.model": model}
    for variable, attribute in K8S_ENV_ATTRIBUTES.items():
        if environ.get(variable):
            attributes[attribute] = environ[variable]
    detected = Resource.create()  # SDK defaults, then OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME
    merged = Resource(attributes).merge(detected)
    if str(detected.attributes.get("service.name", "")).startswith("unknown_service"):
        merged = merged.merge(Resource({"service.name": DEFAULT_SERVICE_NAME}))
    return merged


class DropCounter:
    """Counts spans lost on their way out, by reason, and logs each reason once."""

    REASONS = ("queue_full", "export_failed")

    def __init__(self, registry: CollectorRegistry = REGISTRY):
        self.counter = Counter("slo_engine_trace_spans_dropped", "Spans dropped instead of exported, by reason.",
                               ["reason"], registry=registry)
        for reason in self.REASONS:
            self.counter.labels(reason=reason)
        self._logged: set[str] = set()

    def drop(self, reason: str, count: int) -> None:
        self.counter.labels(reason=reason).inc(count)
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("dropping trace spans (%s); serving is unaffected, this is logged once", reason)


class _CountingExporter(SpanExporter):
    """Wraps the real exporter: failed batches are counted, and the pending count falls."""

    def __init__(self, exporter: SpanExporter, processor: "BoundedBatchSpanProcessor"):
        self.exporter = exporter
        self.processor = processor

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.exporter.export(spans)
        except Exception:  # an exporter must never take the serving process down
            result = SpanExportResult.FAILURE
        self.processor.settle(len(spans))
        if result is not SpanExportResult.SUCCESS:
            self.processor.drops.drop("export_failed", len(spans))
        return result

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


class BoundedBatchSpanProcessor(BatchSpanProcessor):
    """A batch processor that counts what it drops when its queue is full.

    The SDK's processor drops silently past max_queue_size; this one keeps its own
    count of spans handed over but not yet exported, and refuses (counting) beyond it.
    """

    def __init__(self, exporter: SpanExporter, drops: DropCounter, max_queue_size: int = MAX_QUEUE_SIZE,
                 **kwargs: Any):
        self.drops = drops
        self.max_queue_size = max_queue_size
        self._pending = 0
        self._lock = threading.Lock()
        super().__init__(_CountingExporter(exporter, self), max_queue_size=max_queue_size, **kwargs)

    def on_end(self, span: ReadableSpan) -> None:
        if not span.context.trace_flags.sampled:
            return
        with self._lock:
            full = self._pending >= self.max_queue_size
            if not full:
                self._pending += 1
        if full:
            self.drops.drop("queue_full", 1)
            return
        super().on_end(span)

    def settle(self, count: int) -> None:
        with self._lock:
            self._pending = max(0, self._pending - count)


def make_exporter(name: str) -> SpanExporter | None:
    """The exporter named by --trace-exporter; each reads its own OTEL_EXPORTER_* variables."""
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if name == "jaeger":
        try:
            from opentelemetry.exporter.jaeger.thrift import JaegerExporter
        except ImportError as exc:
            print("slo-sidecar engine: error: --trace-exporter jaeger needs the optional extra: "
                  f"pip install 'slo-sidecar[jaeger]' ({exc})", file=sys.stderr)
            raise SystemExit(2) from None
        return JaegerExporter()  # OTEL_EXPORTER_JAEGER_AGENT_HOST / _PORT (default localhost:6831)
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    return None


class RequestTracer:
    """Builds the span tree of each request; a no-op tracer when tracing is off."""

    def __init__(self, provider: TracerProvider | None):
        self.provider = provider
        self.tracer = (provider or trace.NoOpTracerProvider()).get_tracer(TRACER_NAME)
        self.enabled = provider is not None

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()

    # --- The HTTP SERVER span ---------------------------------------------------------------

    def start_server_span(self, method: str, route: str, path: str, headers: Mapping[str, str],
                          host: str | None) -> Span:
        """A SERVER span, child of the caller's W3C traceparent when there is one."""
        parent = propagate.extract(headers)
        attributes = {"http.request.method": method, "http.route": route, "url.path": path, "url.scheme": "http"}
        if host:
            address, _, port = host.partition(":")
            attributes["server.address"] = address
            if port.isdigit():
                attributes["server.port"] = int(port)
        if headers.get("User-Agent"):
            attributes["user_agent.original"] = headers["User-Agent"]
        return self.tracer.start_span(f"{method} {route}", context=parent, kind=SpanKind.SERVER,
                                      attributes=attributes)

    @staticmethod
    def end_server_span(span: Span, status_code: int) -> None:
        span.set_attribute("http.response.status_code", status_code)
        if status_code >= 500 or status_code == 499:  # 4xx are the client's errors, not the server's
            span.set_status(Status(StatusCode.ERROR))
            span.set_attribute("error.type", str(status_code))
        span.end()

    @staticmethod
    def trace_id_of(span: Span | None) -> str | None:
        """The trace id as Jaeger shows it (32 hex digits), when the span is sampled."""
        if span is None:
            return None
        context = span.get_span_context()
        return format(context.trace_id, "032x") if context.is_valid and context.trace_flags.sampled else None

    # --- The GenAI span and its phases --------------------------------------------------------

    @staticmethod
    def monotonic_to_wall_ns() -> int:
        """The offset from the machine-wide monotonic clock to the wall clock, now.

        Measured per request, so a wall clock slewed by NTP since start-up cannot skew the spans.
        """
        return time.time_ns() - time.monotonic_ns()

    def _phases(self, parent: Span, queued: int, scheduled: int, first_token: int, last_token: int) -> None:
        """The queue, prefill and decode children between those wall-clock instants (ns), and the first token."""
        context = trace.set_span_in_context(parent)
        for name, start, end in (("queue", queued, scheduled), ("prefill", scheduled, first_token),
                                 ("decode", first_token, last_token)):
            self.tracer.start_span(name, context=context, kind=SpanKind.INTERNAL, start_time=start).end(end)
        parent.add_event("first_token", timestamp=first_token)

    def joined_request_spans(self, request: "PendingRequest", error_reason: str | None) -> None:
        """The GenAI span and its queue / prefill / decode children of a request served by vLLM's own server,
        under the SERVER span the middleware opened, drawn once the request's two views are joined.

        vLLM reports each phase's length; the phases end where the engine reported the request finished (no
        later than its last byte), so they are laid back to back from there.
        """
        parent = request.server_span
        if not self.enabled or parent is None:
            return
        offset = self.monotonic_to_wall_ns()
        wall = lambda monotonic_s: int(monotonic_s * 1e9) + offset  # noqa: E731
        operation = "chat" if request.chat else "text_completion"
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation, "gen_ai.provider.name": "vllm", "gen_ai.system": "vllm",
            "gen_ai.request.model": request.tenant, "gen_ai.response.model": request.tenant,
            "gen_ai.response.id": ("chatcmpl-" if request.chat else "cmpl-") + request.request_id,
            **request.attributes}
        views = request.engine
        if views:
            attributes["gen_ai.usage.input_tokens"] = request.prompt_tokens()
            attributes["gen_ai.usage.output_tokens"] = request.generation_tokens()
            attributes["gen_ai.usage.cache_read.input_tokens"] = sum(view.cached_tokens for view in views)
            attributes["gen_ai.response.finish_reasons"] = [view.finish_reason for view in views]
            attributes["vllm.num_preemptions"] = sum(view.preemptions for view in views)
        end = wall(request.finished_at if request.finished_at is not None else time.monotonic())
        start = max(wall(request.started_at), getattr(parent, "start_time", None) or 0)  # not before its parent
        span = self.tracer.start_span(f"{operation} {request.tenant}", context=trace.set_span_in_context(parent),
                                      kind=SpanKind.INTERNAL, attributes=attributes, start_time=start)
        for name, event_attributes in request.events:
            span.add_event(name, event_attributes, timestamp=start)
        if error_reason is not None:
            set_error(span, error_reason, f"the request ended with HTTP {request.status}")
        if views:
            view = views[0]
            last_token = min(wall(view.finished_at), end)
            first_token = last_token - int(view.decode_s * 1e9)
            scheduled = first_token - int(view.prefill_s * 1e9)
            self._phases(span, scheduled - int(view.queued_s * 1e9), scheduled, first_token, last_token)
        span.end(end_time=end)


def setup_tracing(exporter_name: str, service_version: str, model: str,
                  registry: CollectorRegistry = REGISTRY) -> RequestTracer:
    """A RequestTracer per the flag and the OTEL_* environment; a no-op one when off."""
    if exporter_name == "none" or sdk_disabled():
        return RequestTracer(None)
    exporter = make_exporter(exporter_name)
    # The sampler comes from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (default: parent-based, always on).
    provider = TracerProvider(resource=build_resource(service_version, model))
    provider.add_span_processor(BoundedBatchSpanProcessor(exporter, DropCounter(registry)))
    log.info("tracing: exporting spans with %s", exporter_name)
    return RequestTracer(provider)


def set_error(span: Span, reason: str, message: str) -> None:
    span.set_status(Status(StatusCode.ERROR, f"{reason}: {message}"))
    span.set_attribute("error.type", reason)
