"""Tracing set-up and span bookkeeping, without an engine."""

from __future__ import annotations

import threading
import time
from typing import Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from slo_sidecar.engine.request_join import EngineView, PendingRequest
from slo_sidecar.engine.tracing import BoundedBatchSpanProcessor, DropCounter, RequestTracer, build_resource, setup_tracing


class BlockedExporter(SpanExporter):
    """An exporter stuck on a dead collector until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(10)
        self.exported += len(spans)
        return SpanExportResult.SUCCESS


class FailingExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        raise ConnectionRefusedError("collector down")


def dropped(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("slo_engine_trace_spans_dropped_total", {"reason": reason})


def tracer_with(exporter: SpanExporter, registry: CollectorRegistry, **kwargs):
    processor = BoundedBatchSpanProcessor(exporter, DropCounter(registry), **kwargs)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    return provider, provider.get_tracer("test")


def test_full_queue_drops_and_counts_instead_of_blocking():
    registry = CollectorRegistry()
    exporter = BlockedExporter()
    provider, tracer = tracer_with(exporter, registry, max_queue_size=10, max_export_batch_size=10,
                                   schedule_delay_millis=10)
    started = time.perf_counter()
    for _ in range(50):
        tracer.start_span("request").end()
    assert time.perf_counter() - started < 1.0, "ending spans must never wait on the exporter"
    assert dropped(registry, "queue_full") >= 30
    exporter.release.set()
    provider.shutdown()
    assert exporter.exported + dropped(registry, "queue_full") == 50


def test_exporter_failures_are_counted_not_raised():
    registry = CollectorRegistry()
    provider, tracer = tracer_with(FailingExporter(), registry, schedule_delay_millis=10)
    for _ in range(5):
        tracer.start_span("request").end()
    provider.force_flush()
    provider.shutdown()
    assert dropped(registry, "export_failed") == 5


def test_resource_has_service_version_model_and_pod(monkeypatch):
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "team=inference")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    resource = build_resource("1.2.3", "tiny-llama", {"POD_NAME": "p", "POD_NAMESPACE": "ns"}).attributes
    assert resource["service.name"] == "slo-sidecar-engine"
    assert (resource["service.version"], resource["gen_ai.request.model"]) == ("1.2.3", "tiny-llama")
    assert (resource["k8s.pod.name"], resource["k8s.namespace.name"]) == ("p", "ns")
    assert "k8s.node.name" not in resource
    assert resource["team"] == "inference"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "my-engine")
    assert build_resource("1", "m", {}).attributes["service.name"] == "my-engine"


def test_sdk_disabled_or_none_means_no_tracing(monkeypatch):
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not setup_tracing("console", "1", "m", CollectorRegistry()).enabled
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    assert not setup_tracing("none", "1", "m", CollectorRegistry()).enabled
    assert setup_tracing("console", "1", "m", CollectorRegistry()).enabled


def memory_tracer() -> tuple[RequestTracer, InMemorySpanExporter]:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return RequestTracer(provider), exporter


def test_the_phases_end_where_the_engine_finished_laid_back_to_back_under_the_genai_span():
    """vLLM reports each phase's length; they end where its engine view arrived (no later than the last byte)."""
    tracer, exporter = memory_tracer()
    started = time.monotonic() - 1.0
    server = tracer.start_server_span("POST", "/v1/completions", "/v1/completions", {}, "127.0.0.1:8000")
    request = PendingRequest("r1", "tiny-llama", started, prompts=1, n=1, streamed=False, server_span=server,
                             status=200, finished_at=started + 0.9)
    request.engine.append(EngineView(queued_s=0.1, prefill_s=0.2, decode_s=0.4, prompt_tokens=5,
                                     generation_tokens=9, preemptions=1, cached_tokens=4,
                                     finished_at=started + 0.8, finish_reason="length"))
    tracer.joined_request_spans(request, None)
    tracer.end_server_span(server, 200)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    offset_ns = time.time_ns() - time.monotonic_ns()
    genai, queue, prefill, decode = (spans[name] for name in ("text_completion tiny-llama", "queue", "prefill",
                                                               "decode"))
    assert genai.parent.span_id == spans["POST /v1/completions"].context.span_id
    assert {queue.parent.span_id, prefill.parent.span_id, decode.parent.span_id} == {genai.context.span_id}
    assert abs(decode.end_time - ((started + 0.8) * 1e9 + offset_ns)) < 5e6  # within 5 ms
    assert queue.end_time == prefill.start_time and prefill.end_time == decode.start_time
    lengths = [(span.end_time - span.start_time) / 1e9 for span in (queue, prefill, decode)]
    assert lengths == pytest.approx([0.1, 0.2, 0.4], abs=1e-6)
    assert genai.attributes["gen_ai.usage.output_tokens"] == 9 and genai.attributes["vllm.num_preemptions"] == 1
    assert genai.attributes["gen_ai.usage.cache_read.input_tokens"] == 4
    assert genai.attributes["gen_ai.response.finish_reasons"] == ("length",)


def test_a_request_with_no_engine_view_has_a_genai_span_and_no_phases():
    tracer, exporter = memory_tracer()
    server = tracer.start_server_span("POST", "/v1/completions", "/v1/completions", {}, None)
    started = time.monotonic()
    request = PendingRequest("r2", "tiny-llama", started, prompts=1, n=1, streamed=True, server_span=server,
                             status=504, finished_at=started + 0.1)
    tracer.joined_request_spans(request, "timeout")
    tracer.end_server_span(server, 504)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"POST /v1/completions", "text_completion tiny-llama"}
    assert spans["text_completion tiny-llama"].attributes["error.type"] == "timeout"
