"""Traces from the real engine, received over OTLP/HTTP by a real receiver in this process."""

from __future__ import annotations

import json
import re

import aiohttp
import pytest

from tests.conftest import run_async
from tests.otlp_receiver import ReceivedSpan
from tests.test_engine_api import AUTH, post, session, set_faults

pytestmark = pytest.mark.engine

INCOMING_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING_PARENT = "00f067aa0ba902b7"


def complete_tree(spans: list[ReceivedSpan]) -> bool:
    return {"queue", "prefill", "decode"} <= {s.name for s in spans}


def by_name(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {s.name: s for s in spans}


def check_tree(spans: list[ReceivedSpan], server_name: str, genai_name: str) -> dict[str, ReceivedSpan]:
    """The shape every successful request's trace has; returns the spans by name."""
    named = by_name(spans)
    assert set(named) == {server_name, genai_name, "queue", "prefill", "decode"}, sorted(named)
    server, genai = named[server_name], named[genai_name]
    assert (server.kind, genai.kind) == ("SERVER", "INTERNAL")
    assert genai.parent_span_id == server.span_id
    for phase in ("queue", "prefill", "decode"):
        assert named[phase].parent_span_id == genai.span_id and named[phase].kind == "INTERNAL"
    queue, prefill, decode = named["queue"], named["prefill"], named["decode"]
    # vLLM's monotonic timestamps, converted to wall clock, fall in order inside the request.
    assert server.start_ns <= genai.start_ns <= queue.start_ns
    assert queue.start_ns <= queue.end_ns == prefill.start_ns < prefill.end_ns == decode.start_ns <= decode.end_ns
    assert decode.end_ns <= genai.end_ns <= server.end_ns
    assert genai.events["first_token"] == prefill.end_ns
    assert server.status == genai.status == "UNSET"
    return named


@run_async
async def test_completion_trace_continues_the_callers_trace(engine, otlp_receiver):
    traceparent = f"00-{INCOMING_TRACE}-{INCOMING_PARENT}-01"
    async with session() as s:
        async with s.post(engine.url + "/v1/completions", headers={**AUTH, "traceparent": traceparent},
                          json={"prompt": "trace me", "max_tokens": 6, "temperature": 0.5, "top_p": 0.9,
                                "ignore_eos": True}) as r:
            body = await r.json()
            assert r.headers["X-Trace-Id"] == INCOMING_TRACE
    spans = otlp_receiver.trace(INCOMING_TRACE, complete_tree)
    named = check_tree(spans, "POST /v1/completions", "text_completion tiny-llama")
    server, genai = named["POST /v1/completions"], named["text_completion tiny-llama"]
    assert server.parent_span_id == INCOMING_PARENT
    assert server.attributes["http.request.method"] == "POST"
    assert server.attributes["http.route"] == "/v1/completions"
    assert server.attributes["http.response.status_code"] == 200
    attrs = genai.attributes
    assert attrs["gen_ai.operation.name"] == "text_completion"
    assert attrs["gen_ai.request.model"] == "tiny-llama"
    assert (attrs["gen_ai.request.max_tokens"], attrs["gen_ai.request.temperature"],
            attrs["gen_ai.request.top_p"]) == (6, 0.5, 0.9)
    assert attrs["gen_ai.usage.input_tokens"] == body["usage"]["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == body["usage"]["completion_tokens"] == 6
    assert attrs["gen_ai.response.id"] == body["id"]
    assert attrs["gen_ai.response.finish_reasons"] == ["length"]
    assert attrs["vllm.num_preemptions"] == 0
    assert "gen_ai.usage.cache_read.input_tokens" in attrs
    resource = genai.resource
    assert resource["service.name"] == "slo-sidecar-test"
    assert resource["gen_ai.request.model"] == "tiny-llama"
    assert resource["deployment.environment.name"] == "test"
    assert (resource["k8s.pod.name"], resource["k8s.namespace.name"], resource["k8s.node.name"]) == (
        "engine-pod-0", "inference", "node-a")
    assert resource["service.version"]


@run_async
async def test_streamed_chat_trace(engine, otlp_receiver):
    async with session() as s:
        async with s.post(engine.url + "/v1/chat/completions", headers=AUTH, json={
                "messages": [{"role": "user", "content": "stream a trace"}], "max_tokens": 8, "n": 2,
                "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}) as r:
            trace_id = r.headers["X-Trace-Id"]
            events = [json.loads(line[6:]) for line in (await r.text()).split("\n\n")
                      if line.startswith("data: {")]
    assert re.fullmatch("[0-9a-f]{32}", trace_id) and trace_id != INCOMING_TRACE
    usage = events[-1]["usage"]
    spans = otlp_receiver.trace(trace_id, complete_tree)
    named = check_tree(spans, "POST /v1/chat/completions", "chat tiny-llama")
    genai = named["chat tiny-llama"]
    assert genai.attributes["gen_ai.operation.name"] == "chat"
    assert genai.attributes["gen_ai.request.choice.count"] == 2
    assert genai.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"] == 16
    assert genai.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert genai.attributes["gen_ai.response.finish_reasons"] == ["length", "length"]


@run_async
async def test_failed_request_trace_has_error_status(engine, otlp_receiver):
    async with session() as s:
        await set_faults(engine, error_ratio=1.0)
        try:
            async with s.post(engine.url + "/v1/completions", headers=AUTH,
                              json={"prompt": "fail", "max_tokens": 2}) as r:
                assert r.status == 500
                trace_id = r.headers["X-Trace-Id"]
        finally:
            await set_faults(engine, error_ratio=0.0)
    spans = otlp_receiver.trace(trace_id, lambda found: len(found) >= 2)
    named = by_name(spans)
    server, genai = named["POST /v1/completions"], named["text_completion tiny-llama"]
    assert server.status == "ERROR" and server.attributes["http.response.status_code"] == 500
    assert genai.status == "ERROR" and genai.status_message.startswith("engine_error:")
    assert genai.attributes["error.type"] == "engine_error"
    assert "queue" not in named  # the request never reached vLLM


@run_async
async def test_client_disconnect_trace_has_error_status(engine, otlp_receiver):
    async with session() as s:
        await set_faults(engine, token_delay_s=0.02)
        try:
            async with s.post(engine.url + "/v1/completions", headers=AUTH, json={
                    "prompt": "leave", "max_tokens": 200, "stream": True, "ignore_eos": True}) as r:
                trace_id = r.headers["X-Trace-Id"]
                await r.content.readline()
        finally:
            await set_faults(engine, token_delay_s=0.0)
    spans = otlp_receiver.trace(trace_id, lambda found: len(found) >= 2)
    genai = by_name(spans)["text_completion tiny-llama"]
    assert genai.status == "ERROR"
    assert genai.attributes["error.type"] == "client_disconnect"
    assert by_name(spans)["POST /v1/completions"].attributes["http.response.status_code"] == 499


@run_async
async def test_latency_histogram_carries_trace_exemplars(engine):
    async with session() as s:
        status, headers, _ = await post(s, engine.url + "/v1/completions", {"prompt": "exemplar", "max_tokens": 2})
        assert status == 200
        async with s.get(engine.url + "/metrics",
                         headers={"Accept": "application/openmetrics-text; version=1.0.0"}) as r:
            text = await r.text()
    exemplar_lines = [line for line in text.splitlines()
                      if line.startswith('slo_engine_http_request_duration_seconds_bucket{endpoint="/v1/completions"')
                      and "# {" in line]
    trace_id = {name.lower(): value for name, value in headers.items()}["x-trace-id"]
    assert any(f'trace_id="{trace_id}"' in line for line in exemplar_lines), exemplar_lines


@run_async
async def test_probes_and_metrics_are_not_traced(engine, otlp_receiver):
    async with aiohttp.ClientSession() as s:
        for path in ("/health", "/ready", "/metrics"):
            async with s.get(engine.url + path) as r:
                assert "X-Trace-Id" not in r.headers
        async with s.get(engine.url + "/v1/models", headers=AUTH) as r:
            models_trace = r.headers["X-Trace-Id"]
    assert otlp_receiver.trace(models_trace, bool)[0].name == "GET /v1/models"  # API routes are traced
    probes = {"/health", "/ready", "/metrics"}
    assert not [span for span in otlp_receiver.spans if span.attributes.get("http.route") in probes]
