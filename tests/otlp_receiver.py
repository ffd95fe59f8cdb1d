"""A real OTLP/HTTP trace receiver for tests: an aiohttp server on its own thread.

It decodes ExportTraceServiceRequest protobufs, as Jaeger or the Collector
would on port 4318, and keeps the spans for assertions.
"""

from __future__ import annotations

import gzip
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.threaded_server import ThreadedServer

SPAN_KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
STATUS_CODES = {0: "UNSET", 1: "OK", 2: "ERROR"}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


@dataclass
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status: str
    status_message: str
    events: dict[str, int]  # event name -> time
    resource: dict[str, Any] = field(repr=False)


class OtlpReceiver(ThreadedServer):
    def __init__(self, decode: bool = True) -> None:
        super().__init__()
        self.decode = decode  # off: accept and count requests only, as cheap as a remote collector
        self.endpoint = self.url
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self._lock = threading.Lock()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not self.decode:
            with self._lock:
                self.requests += 1
            return web.Response(body=b"", content_type="application/x-protobuf")
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        message = ExportTraceServiceRequest.FromString(body)
        received = []
        for resource_spans in message.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(ReceivedSpan(
                        trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(), name=span.name,
                        kind=SPAN_KINDS.get(span.kind, str(span.kind)),
                        start_ns=span.start_time_unix_nano, end_ns=span.end_time_unix_nano,
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        status=STATUS_CODES[span.status.code], status_message=span.status.message,
                        events={e.name: e.time_unix_nano for e in span.events}, resource=resource))
        with self._lock:
            self.requests += 1
            self.spans.extend(received)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/traces", self._handle)

    def trace(self, trace_id: str, until: Callable[[list[ReceivedSpan]], bool],
              timeout_s: float = 15.0) -> list[ReceivedSpan]:
        """The spans of one trace, once `until` holds for them (spans arrive in batches)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                spans = [s for s in self.spans if s.trace_id == trace_id]
            if until(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.1)
