"""SloMiddleware in-process, around a stand-in ASGI app (no vLLM: what is tested is what the middleware does
before and around the app): admission before the body is read and before vLLM would tokenise it, the body's
size and time limits, the body handed on byte for byte, and what each refusal counts; every error body in
vLLM's shape, and uvicorn's own 400s counted."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging

import pytest
from prometheus_client import CollectorRegistry

from slo_sidecar.engine import instrumentation
from slo_sidecar.engine.asgi import SloMiddleware, in_openai_shape
from slo_sidecar.engine.malformed_http import MalformedRequests
from slo_sidecar.engine.metrics import ServerMetrics
from tests.conftest import run_async
from tests.helpers import metric, parse_metrics

MODEL = "tiny-llama"


@pytest.fixture
def state(monkeypatch):
    """The process's instrumentation, with max_num_seqs 2 and 1 more waiting: 3 sequences admitted."""
    monkeypatch.setenv("SLO_ENGINE_MAX_WAITING_REQUESTS", "1")
    monkeypatch.setenv("SLO_ENGINE_MAX_BODY_BYTES", "1000")
    monkeypatch.setenv("SLO_ENGINE_BODY_TIMEOUT_S", "0.2")
    made = instrumentation.Instrumentation((MODEL,), max_num_seqs=2, registry=CollectorRegistry())
    monkeypatch.setattr(instrumentation, "_current", made)
    return made


class StandIn:
    """An ASGI app that reads the whole body, then answers 200 with what it read."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope, receive, send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


async def call(app, body_parts: list[bytes], stall: bool = False) -> tuple[int, dict, dict]:
    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": [],
             "client": ("10.0.0.1", 1234)}
    parts = [{"type": "http.request", "body": part, "more_body": i < len(body_parts) - 1 or stall}
             for i, part in enumerate(body_parts)]

    async def receive():
        if parts:
            return parts.pop(0)
        await asyncio.sleep(3600)  # a client that stops sending

    sent: list[dict] = []

    async def send(message):
        sent.append(message)
    await SloMiddleware(app)(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), json.loads(body)


def counted(state, code: str) -> float:
    return metric(parse_metrics_of(state), "slo_engine_http_requests_total", endpoint="/v1/completions", code=code)


def parse_metrics_of(state) -> dict:
    from prometheus_client import generate_latest

    return parse_metrics(generate_latest(state.own).decode())


@run_async
async def test_the_body_reaches_the_app_as_it_came(state):
    app = StandIn()
    parts = [b'{"model": "tiny-llama", ', b'"prompt": "hi", "n": 2}']
    status, _, _ = await call(app, parts)
    assert status == 200 and app.bodies == [b"".join(parts)]
    assert state.active_sequences == 0, "given back when the answer went out"


@run_async
async def test_a_full_server_refuses_before_it_reads_the_body(state):
    state.active_sequences = 3  # all admitted
    app = StandIn()
    status, headers, error = await call(app, [b'{"prompt": "x"}'], stall=True)  # a body that would never end
    assert status == 429 and headers[b"retry-after"] == b"1"
    assert error["error"]["code"] == 429 and error["error"]["type"] == "TooManyRequestsError"
    assert app.bodies == [] and state.active_sequences == 3, "nothing taken, nothing given back"
    assert counted(state, "429") == 1


@run_async
async def test_a_request_for_more_sequences_than_fit_is_refused_before_vllm_sees_it(state):
    state.active_sequences = 2  # one more fits
    app = StandIn()
    refused = await call(app, [b'{"model": "tiny-llama", "prompt": ["a", "b"], "n": 1}'])
    admitted = await call(app, [b'{"model": "tiny-llama", "prompt": "a", "n": 1}'])
    assert (refused[0], admitted[0]) == (429, 200)
    assert len(app.bodies) == 1 and state.active_sequences == 2
    assert metric(parse_metrics_of(state), "slo_engine_request_errors_total", reason="overload", model=MODEL) == 1


@run_async
async def test_a_body_too_large_is_413_and_a_slow_one_408(state):
    app = StandIn()
    large = await call(app, [b'{"prompt": "', b"x" * 1000, b'"}'])
    slow = await call(app, [b'{"prompt": '], stall=True)
    assert large[0] == 413 and large[1][b"connection"] == b"close"
    assert slow[0] == 408 and slow[1][b"connection"] == b"close"
    assert app.bodies == [] and state.active_sequences == 0
    assert counted(state, "413") == counted(state, "408") == 1


def test_a_bad_limit_names_its_variable(monkeypatch):
    monkeypatch.setenv("SLO_ENGINE_MAX_BODY_BYTES", "lots")
    with pytest.raises(instrumentation.SettingsError) as caught:
        instrumentation.Limits.from_environ(__import__("os").environ)
    # The sidecar's settings loader, the same words: source, setting, reason.
    assert str(caught.value) == ("environment variable SLO_ENGINE_MAX_BODY_BYTES: max_body_bytes: "
                                 "expected an integer > 0, got 'lots'")


@pytest.mark.parametrize(("ours", "queued", "limit"), [(5, None, 5), (5, 100, 5), (None, 20, 16), (None, 3, 0),
                                                       (None, None, None)])
def test_the_waiting_limit_is_ours_else_what_vllms_own_leaves(ours, queued, limit):
    """With max_num_seqs 4, vLLM's limit on unfinished requests leaves queued - 4 waiting."""
    assert instrumentation.waiting_limit(ours, 4, queued) == limit


def test_no_waiting_limit_means_no_series_not_a_limit_of_zero(monkeypatch):
    """LLMQueueDepthHigh divides the waiting requests by it: 0 would read +Inf and page on any queue."""
    monkeypatch.delenv("SLO_ENGINE_MAX_WAITING_REQUESTS", raising=False)
    unlimited = instrumentation.Instrumentation((MODEL,), max_num_seqs=2, registry=CollectorRegistry())
    assert not [name for name, _ in parse_metrics_of(unlimited) if name == "slo_engine_max_waiting_requests"]
    vllms = instrumentation.Instrumentation((MODEL,), max_num_seqs=2, registry=CollectorRegistry(),
                                            max_num_queued_reqs=10)
    assert metric(parse_metrics_of(vllms), "slo_engine_max_waiting_requests") == 8


@run_async
async def test_a_body_nested_past_the_parsers_depth_is_400_not_vllms_500(state):
    """vLLM's own server answers 500 to it (its JSON parser's RecursionError): refused here first."""
    state.limits = dataclasses.replace(state.limits, max_body_bytes=None)
    app = StandIn()
    status, _, error = await call(app, [b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"])
    assert status == 400 and "nests deeper" in error["error"]["message"]
    assert app.bodies == [] and counted(state, "400") == 1


@pytest.mark.parametrize("status, body, message", [
    (404, b'{"detail":"Not Found"}', "Not Found"),  # Starlette: an unknown route
    (401, b'{"error":"Unauthorized"}', "Unauthorized"),  # vLLM's API key check
    (400, b'{"detail":"There was an error parsing the body"}', "There was an error"),  # FastAPI
    (422, b'{"detail":[{"loc":["body"],"msg":"field required"}]}', '[{"loc"'),
    (400, b"not json", "Bad Request"),
])
def test_every_error_body_leaves_in_vllms_shape(status, body, message):
    error = json.loads(in_openai_shape(status, body))["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == status and error["message"].startswith(message) and error["type"].endswith("Error")


def test_an_error_already_in_vllms_shape_goes_out_as_it_came():
    body = b'{"error": {"message": "m", "type": "BadRequestError", "param": "max_tokens", "code": 400}}'
    assert in_openai_shape(400, body) == body


def test_uvicorns_own_400s_are_counted_and_logged_at_most_once_a_minute():
    registry = CollectorRegistry()
    now = [0.0]
    malformed = MalformedRequests(ServerMetrics(registry, models=("m",)), clock=lambda: now[0])

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 0, message, None, None)

    assert [malformed.filter(record("Invalid HTTP request received.")) for _ in range(3)] == [False] * 3
    assert malformed.filter(record("Exceeded concurrency limit.")) is True  # anything else is uvicorn's to log
    assert registry.get_sample_value("slo_engine_http_requests_total",
                                     {"endpoint": "other", "code": "400", "model": ""}) == 3
    assert registry.get_sample_value("slo_engine_request_errors_total", {"reason": "validation", "model": ""}) == 3
    assert malformed.unlogged == 2  # the first logged at once; the next two wait for the minute
    now[0] = 61.0
    malformed.filter(record("Invalid HTTP request received."))
    assert malformed.unlogged == 0
