"""Tracing set-up and span bookkeeping, without an engine."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from engine.tracing import BoundedBatchSpanProcessor, DropCounter, RequestTracer, build_resource, setup_tracing


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


@dataclass
class FakeStats:
    """The fields of vLLM's RequestStateStats that tracing reads."""

    arrival_time: float
    queued_ts: float
    scheduled_ts: float
    first_token_ts: float
    last_token_ts: float
    num_preemptions: int = 1


def memory_tracer() -> tuple[RequestTracer, InMemorySpanExporter]:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return RequestTracer(provider), exporter


def test_phase_spans_convert_the_monotonic_clock_to_wall_time():
    tracer, exporter = memory_tracer()
    now_mono, now_wall = time.monotonic(), time.time()
    stats = FakeStats(arrival_time=now_wall - 0.5, queued_ts=now_mono - 0.5, scheduled_ts=now_mono - 0.4,
                      first_token_ts=now_mono - 0.3, last_token_ts=now_mono - 0.1)
    with tracer.tracer.start_as_current_span("parent") as parent:
        tracer.add_phase_spans(parent, stats, cached_tokens=16)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert abs(spans["queue"].start_time - (now_wall - 0.5) * 1e9) < 5e6  # within 5 ms
    assert spans["queue"].end_time == spans["prefill"].start_time
    assert spans["prefill"].end_time - spans["prefill"].start_time == pytest.approx(0.1e9, abs=1e3)
    assert spans["decode"].end_time - spans["decode"].start_time == pytest.approx(0.2e9, abs=1e3)
    assert spans["parent"].attributes["vllm.num_preemptions"] == 1
    assert spans["parent"].attributes["gen_ai.usage.cache_read.input_tokens"] == 16


def test_timestamps_from_another_clock_are_refused_not_drawn():
    tracer, exporter = memory_tracer()
    wall = time.time()
    # Wall-clock seconds where monotonic ones belong: the mix-up this check exists for.
    stats = FakeStats(arrival_time=wall, queued_ts=wall, scheduled_ts=wall + 0.1, first_token_ts=wall + 0.2,
                      last_token_ts=wall + 0.3)
    with tracer.tracer.start_as_current_span("parent") as parent:
        tracer.add_phase_spans(parent, stats, cached_tokens=None)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"parent"}
    assert spans["parent"].attributes["slo_sidecar.phase_spans_skipped"] == "clock mismatch"


def test_aborted_in_queue_has_no_phase_spans():
    tracer, exporter = memory_tracer()
    stats = FakeStats(arrival_time=time.time(), queued_ts=time.monotonic(), scheduled_ts=0.0, first_token_ts=0.0,
                      last_token_ts=0.0)
    with tracer.tracer.start_as_current_span("parent") as parent:
        tracer.add_phase_spans(parent, stats, cached_tokens=None)
    assert [s.name for s in exporter.get_finished_spans()] == ["parent"]
