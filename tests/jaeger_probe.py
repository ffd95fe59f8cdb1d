"""Run inside .venv-jaeger (the `jaeger` extra): send one request's spans through
`--trace-exporter jaeger` to a UDP listener here, decode the thrift batch the way
a Jaeger agent does, and print it as JSON for test_jaeger_exporter to check.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(15)
    os.environ.update({"OTEL_EXPORTER_JAEGER_AGENT_HOST": "127.0.0.1",
                       "OTEL_EXPORTER_JAEGER_AGENT_PORT": str(listener.getsockname()[1]),
                       "OTEL_SERVICE_NAME": "jaeger-probe"})

    import time

    from prometheus_client import CollectorRegistry

    from slo_sidecar.engine.request_join import EngineView, PendingRequest
    from slo_sidecar.engine.tracing import setup_tracing

    tracer = setup_tracing("jaeger", "0.1.0", "tiny-llama", CollectorRegistry())
    server = tracer.start_server_span("POST", "/v1/completions", "/v1/completions", {}, "127.0.0.1:8000")
    started = time.monotonic()
    request = PendingRequest("probe", "tiny-llama", started, prompts=1, n=1, streamed=False,
                             attributes={"gen_ai.request.max_tokens": 8}, server_span=server, status=200,
                             finished_at=started + 0.05)
    request.engine.append(EngineView(queued_s=0.001, prefill_s=0.01, decode_s=0.03, prompt_tokens=2,
                                     generation_tokens=8, preemptions=0, cached_tokens=0,
                                     finished_at=started + 0.045, finish_reason="length"))
    tracer.joined_request_spans(request, None)
    tracer.end_server_span(server, 200)
    tracer.shutdown()  # flushes the batch to the "agent"

    from opentelemetry.exporter.jaeger.thrift.gen.agent import Agent
    from thrift.protocol import TCompactProtocol
    from thrift.transport import TTransport

    datagram = listener.recv(65535)
    protocol = TCompactProtocol.TCompactProtocol(TTransport.TMemoryBuffer(datagram))
    method, _, _ = protocol.readMessageBegin()
    call = Agent.emitBatch_args()
    call.read(protocol)
    batch = call.batch

    def tag_value(tag):
        for field in ("vStr", "vLong", "vDouble", "vBool"):
            if getattr(tag, field) is not None:
                return getattr(tag, field)
        return None

    print(json.dumps({
        "method": method,
        "service": batch.process.serviceName,
        "spans": [{"name": s.operationName, "trace_id": [s.traceIdHigh, s.traceIdLow], "span_id": s.spanId,
                   "parent_span_id": s.parentSpanId, "tags": {t.key: tag_value(t) for t in s.tags or []}}
                  for s in batch.spans],
    }))


if __name__ == "__main__":
    main()
