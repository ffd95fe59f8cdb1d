"""`SloMiddleware`: our HTTP view of vLLM's OpenAI server, plugged in with vLLM's `--middleware` flag.

    vllm serve MODEL --middleware slo_sidecar.engine.asgi.SloMiddleware

A pure ASGI middleware (not Starlette's BaseHTTPMiddleware, which would buffer streams): it passes every
request through untouched and watches what goes by. Per request: the endpoint (a fixed list, "other"
for the rest), the status it ended with (499 when the client left first), the time to the last byte, and
the tenant (the served name the body's `model` named; UNKNOWN_MODEL otherwise). Generation requests also
get an `X-Request-Id` (the client's, or a fresh one) that vLLM's engine reports them under, so the stat-
logger plugin's view of them joins this one, and for a stream the time the first token-bearing chunk
went out: the time to first token as the client sees it.

It also answers some requests itself, before vLLM sees them, in vLLM's error shape: admission (429),
bodies too large (413), too slow (408) or nested past the JSON parser (400), a request past its timeout
(504), new work while draining (503 "draining"), and injected faults (tests and demos only); and it
serves `/ready`, and `/metrics` in OpenMetrics (exemplars) for a scraper that asks. Each is configured
through engine/instrumentation.py's SLO_ENGINE_* variables, off where unset.

Every error answer leaves in vLLM's error shape, `{"error": {"message", "type", "param", "code"}}`, which
OpenAI clients read: Starlette's `{"detail": ...}` (an unknown route, a body FastAPI cannot parse) and
vLLM's `{"error": "Unauthorized"}` are rewritten, and a 401 gets RFC 6750's `WWW-Authenticate: Bearer`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import time
import uuid
from http import HTTPStatus
from typing import Any, Awaitable, Callable, MutableMapping

from slo_sidecar.iokit.settings import SettingsError
from slo_sidecar.spec.fields import SpecError
from slo_sidecar.spec.model import PROBE_HEADER

from . import instrumentation
from .adapter_cache import AdapterResidency
from .health import visible_gpu_uuids
from .malformed_http import count_malformed_requests
from .metrics import CLIENT_CLOSED_REQUEST, ENDPOINTS, GENERATION_ENDPOINTS, drop_vllm_http_series, exposition
from .prompt_logprobs_guard import PROMPT_LOGPROBS_REFUSAL, asks_prompt_logprobs, lm_head_may_carry_lora
from .request_join import ENGINE_VIEW_GRACE_S, PendingRequest, shape_of

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger(__name__)

REQUEST_ID = b"x-request-id"
TRACE_ID = b"x-trace-id"
CHAT = "/v1/chat/completions"
# The GenAI semantic conventions' request attributes, from the body fields that set them.
GENAI_REQUEST = {"max_tokens": "gen_ai.request.max_tokens", "max_completion_tokens": "gen_ai.request.max_tokens",
                 "temperature": "gen_ai.request.temperature", "top_p": "gen_ai.request.top_p",
                 "top_k": "gen_ai.request.top_k", "n": "gen_ai.request.choice.count", "seed": "gen_ai.request.seed",
                 "stop": "gen_ai.request.stop_sequences", "presence_penalty": "gen_ai.request.presence_penalty",
                 "frequency_penalty": "gen_ai.request.frequency_penalty"}


def endpoint_of(path: str) -> str:
    return path if path in ENDPOINTS else "other"


def is_probe(scope: Scope) -> bool:
    """Marked by the pod's own sidecar, from loopback: a client outside the pod cannot hide its requests."""
    if _header(scope, PROBE_HEADER.lower().encode()) != b"1":
        return False
    client = scope.get("client")
    try:
        return client is not None and ipaddress.ip_address(client[0]).is_loopback
    except ValueError:
        return False


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((value for key, value in scope.get("headers", ()) if key.lower() == name), None)


def genai_attributes(body: dict[str, Any]) -> dict[str, Any]:
    """The span attributes a request body sets: numbers, strings and lists of strings only (what OpenTelemetry
    accepts), whatever the client sent."""
    attributes: dict[str, Any] = {}
    for field, attribute in GENAI_REQUEST.items():
        value = body.get(field)
        if isinstance(value, str) and field == "stop":
            value = [value]
        if isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**63 or isinstance(
                value, float) or (isinstance(value, list) and value and all(isinstance(each, str) for each in value)):
            attributes[attribute] = value  # (OTLP carries 64-bit integers: a larger one is left out)
    return attributes


def in_openai_shape(status: int, body: bytes) -> bytes:
    """An error body in the shape vLLM's own errors take (what OpenAI clients read), whoever answered:
    Starlette's `{"detail": ...}` (an unknown route, a body FastAPI cannot parse) and vLLM's
    `{"error": "Unauthorized"}` are rewritten; a body already in that shape goes out as it came."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict) and parsed["error"].get("message"):
        return body
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    detail = parsed.get("detail", parsed.get("error")) if isinstance(parsed, dict) else parsed
    message = detail if isinstance(detail, str) and detail else json.dumps(detail) if detail else phrase
    return Refusal(status, message, phrase.replace(" ", "").removesuffix("Error") + "Error").body()


def _is_json(start: Message) -> bool:
    return any(key.lower() == b"content-type" and value.startswith(b"application/json")
               for key, value in start.get("headers", ()))


def carries_token(chunk: bytes) -> bool:
    """Whether an SSE chunk of a completion or chat completion carries generated text or a tool call."""
    for line in chunk.split(b"\n"):
        if not line.startswith(b"data: {"):
            continue
        try:
            event = json.loads(line[6:])
        except ValueError:
            continue
        for choice in event.get("choices") or ():
            delta = choice.get("delta") or {}
            if choice.get("text") or delta.get("content") or delta.get("reasoning_content") \
                    or delta.get("reasoning") or delta.get("tool_calls"):
                return True
    return False


def stream_error(chunk: bytes) -> int | None:
    """The status of an error event in a stream that had already answered 200 (vLLM sends it as data)."""
    if b'"error"' not in chunk:
        return None
    for line in chunk.split(b"\n"):
        if line.startswith(b"data: {"):
            try:
                error = json.loads(line[6:]).get("error")
            except ValueError:
                continue
            if isinstance(error, dict):
                code = error.get("code")
                return code if isinstance(code, int) and 400 <= code < 600 else 500
    return None


def error_body(message: str, error_type: str, code: int | str) -> bytes:
    """vLLM's error shape, which OpenAI clients read: the one writer of it here (the admin listener's too)."""
    return json.dumps({"error": {"message": message, "type": error_type, "param": None, "code": code}}).encode()


class Refusal(Exception):
    """A request the middleware answers itself, before vLLM sees it, in vLLM's error shape."""

    def __init__(self, status: int, message: str, error_type: str, headers: tuple[tuple[bytes, bytes], ...] = (),
                 code: int | str | None = None):
        super().__init__(message)
        self.status, self.message, self.error_type, self.headers = status, message, error_type, headers
        self.code = status if code is None else code  # vLLM's is the status; "draining" tells the probe more

    def body(self) -> bytes:
        return error_body(self.message, self.error_type, self.code)

    async def send(self, send: Send) -> None:
        await respond(send, self.status, self.body(), b"application/json", self.headers)


async def respond(send: Send, status: int, body: bytes, content_type: bytes,
                  headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    """A whole answer of the middleware's own."""
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


RETRY_AFTER = (b"retry-after", b"1")
WWW_AUTHENTICATE = (b"www-authenticate", b"Bearer")


class SloMiddleware:
    def __init__(self, app: App):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._lifespan_send(scope, send))
            return
        state = instrumentation.current()
        if scope["type"] != "http" or state is None:
            await self.app(scope, receive, send)
            return
        await _Exchange(state, scope).run(self.app, receive, send)

    def _lifespan_send(self, scope: Scope, send: Send) -> Send:
        async def watched(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                try:
                    await self._start(scope["app"])
                except (SettingsError, SpecError, OSError) as exc:  # uvicorn says why and exits; vLLM stops
                    message = {"type": "lifespan.startup.failed", "message": f"slo-sidecar: {exc}"}
            elif message["type"] == "lifespan.shutdown.complete":
                await self._stop()
            await send(message)
        return watched

    async def _start(self, app: Any) -> None:
        """Our series, for the names vLLM serves (base model, then its --lora-modules), from its app state;
        and the admin listener where one is configured."""
        if instrumentation.serving is not None:
            instrumentation.serving.set()
        models = getattr(app.state, "openai_serving_models", None)
        if models is None:
            return
        base = [path.name for path in models.base_model_paths]
        adapters = [module.name for module in (models.static_lora_modules or ())]
        scheduler = app.state.vllm_config.scheduler_config
        state = instrumentation.start([*base, *adapters], scheduler.max_num_seqs,
                                      getattr(scheduler, "max_num_queued_reqs", None))
        self.watcher = asyncio.create_task(_watch_engine(state, app.state.engine_client))
        lora = app.state.vllm_config.lora_config
        state.refuse_prompt_logprobs = lm_head_may_carry_lora(lora)
        if lora is not None and adapters:  # vLLM's worker caches max_cpu_loras adapters (default: max_loras)
            state.adapters = AdapterResidency(getattr(lora, "max_cpu_loras", None) or lora.max_loras)
        for uuid_ in visible_gpu_uuids():
            state.metrics.accelerators.labels(uuid=uuid_).set(1)
        loop = asyncio.get_running_loop()
        state.metrics.event_loop_tasks.set_function(lambda: len(asyncio.all_tasks(loop)))
        if os.environ.get(instrumentation.VLLM_HTTP_SERIES_ENV) == "off":
            from vllm.v1.metrics.prometheus import get_prometheus_registry

            log.info("dropped %d of vLLM's HTTP series (ours count the same requests)",
                     drop_vllm_http_series(get_prometheus_registry()))
        count_malformed_requests(state.metrics)
        self.listeners = await _side_listeners(state, app.state.engine_client)
        state.ready = True
        state.metrics.ready.set(1)

    async def _stop(self) -> None:
        state = instrumentation.current()
        if state is not None:
            state.ready = False
            state.metrics.ready.set(0)
        for listener in getattr(self, "listeners", ()):
            await listener.cleanup()
        if getattr(self, "watcher", None) is not None:
            self.watcher.cancel()


ENGINE_WATCH_S = 0.5


async def _watch_engine(state: instrumentation.Instrumentation, engine_client: Any) -> None:
    """Tell an orderly shutdown (draining) from a dead engine core: vLLM's server stops after either, and
    AsyncLLM.errored turns true in both. On SIGTERM vLLM calls the engine client's shutdown first, so that
    call marks the server as stopping; errored while not stopping is a death."""
    shutdown = engine_client.shutdown

    def stopping_then_shutdown(*args: Any, **kwargs: Any) -> Any:
        state.stopping = True
        return shutdown(*args, **kwargs)

    engine_client.shutdown = stopping_then_shutdown
    while not state.stopping:
        if engine_client.errored:
            state.died = True
            log.error("vLLM's engine core died; the server stops (the launcher exits 1)")
            return
        await asyncio.sleep(ENGINE_WATCH_S)


async def _side_listeners(state: instrumentation.Instrumentation, engine_client: Any) -> list[Any]:
    """The listeners configured beside vLLM's: /metrics on a port of its own, and the fault-injection one
    (tests and demos only, on loopback)."""
    from vllm.v1.metrics.prometheus import get_prometheus_registry  # the registry vLLM's /metrics serves

    from . import admin

    limits, listeners = state.limits, []
    if limits.metrics_port is not None:
        app = admin.build_metrics_app(get_prometheus_registry())
        listeners.append(await admin.serve(app, limits.metrics_host, limits.metrics_port))
        log.info("serving /metrics on http://%s:%d", limits.metrics_host, limits.metrics_port)
    token = limits.admin_token()
    if token is not None and state.faults is not None:
        listeners.append(await admin.serve(admin.build_admin_app(state.faults, token, engine_client), "127.0.0.1",
                                           limits.admin_port))
        log.warning("admin listener (fault injection) on http://127.0.0.1:%d: for tests and demos only",
                    limits.admin_port)
    return listeners


class _Exchange:
    """One HTTP request on its way through: what the middleware learns of it, and when it ends."""

    def __init__(self, state: instrumentation.Instrumentation, scope: Scope):
        self.state = state
        self.scope = scope
        self.endpoint = endpoint_of(scope.get("path", ""))
        self.started = time.monotonic()
        self.status: int | None = None
        self.done = False  # the last byte went out
        self.disconnected = False
        self.pending: PendingRequest | None = None
        self.tenant = ""
        self.span: Any = None
        tracer = state.tracer
        if tracer.enabled and scope.get("path", "").startswith("/v1/"):
            from starlette.datastructures import Headers  # vLLM's server is Starlette's

            headers = Headers(scope=scope)
            self.span = tracer.start_server_span(scope.get("method", ""), self.endpoint, scope.get("path", ""),
                                                 headers, headers.get("host"))

    async def run(self, app: App, receive: Receive, send: Send) -> None:
        in_flight = self.state.metrics.in_flight.labels(endpoint=self.endpoint)
        in_flight.inc()
        try:
            if self.endpoint == "/ready" and self.scope.get("method") == "GET":
                await self._ready(send)
            elif self.endpoint == "/metrics" and self.state.limits.metrics_port is not None:
                raise Refusal(404, f"/metrics is served on port {self.state.limits.metrics_port}", "NotFoundError")
            elif self.endpoint == "/metrics" and b"openmetrics" in (_header(self.scope, b"accept") or b""):
                await self._openmetrics(self._send(send))
            elif self.endpoint in GENERATION_ENDPOINTS and self.scope.get("method") == "POST":
                if self.state.stopping:  # the sidecar's probe reads "draining" as an orderly shutdown
                    raise Refusal(503, "the server is shutting down", "ServiceUnavailableError", code="draining")
                self._admit(1)  # a full server says so before it reads a body
                receive = await self._read_body(receive)
                await self._generate(app, receive, send)
            else:
                await app(self.scope, self._receive(receive), self._send(send))
        except Refusal as refusal:
            await refusal.send(self._send(send))
        except BaseException:
            if self.status is None or not self.done:
                self.status = CLIENT_CLOSED_REQUEST if self.disconnected else 500
            raise
        finally:
            in_flight.dec()
            if self.pending is not None:
                self.state.active_sequences -= self.pending.sequences
            self._finish()

    async def _ready(self, send: Send) -> None:
        """200 while vLLM serves; 503 once it is draining or stopped (Kubernetes' readiness probe)."""
        ready = self.state.ready and not self.state.stopping
        body = json.dumps({"status": "ready" if ready else "draining" if self.state.stopping else "stopped"}).encode()
        self.status = 200 if ready else 503
        await respond(send, self.status, body, b"application/json")  # not an error body: sent as it is
        self.done = True

    async def _openmetrics(self, send: Send) -> None:
        """/metrics in OpenMetrics, for a scraper that asks for it: vLLM's own /metrics writes the text format
        only, which has no exemplars (the trace ids on our latency buckets)."""
        from vllm.v1.metrics.prometheus import get_prometheus_registry  # the registry vLLM's /metrics serves

        accept = _header(self.scope, b"accept").decode("latin-1")
        body, content_type = await exposition(get_prometheus_registry(), accept)
        await respond(send, 200, body, content_type.encode())

    async def _generate(self, app: App, receive: Receive, send: Send) -> None:
        """A generation request to vLLM, with any injected fault first, within the request timeout."""
        watched = self._send(send)
        try:
            async with asyncio.timeout(self.state.limits.request_timeout_s):
                faults = self.state.faults
                if faults is not None and faults.applies_to(self.tenant):
                    if faults.delay_s:
                        await asyncio.sleep(faults.delay_s)
                    if faults.should_fail():
                        raise Refusal(500, "injected fault: an engine error, for tests and demos", "InternalServerError")
                self._note_adapter_use()
                await app(self.scope, self._receive(receive), watched)
        except TimeoutError:
            timeout = Refusal(504, f"request exceeded the {self.state.limits.request_timeout_s:g} s timeout",
                              "GatewayTimeoutError")
            if self.status is None:
                raise timeout from None
            if not self.done:  # mid-stream: an error event, as vLLM sends its own, then the end
                await watched({"type": "http.response.body",
                               "body": b"data: " + timeout.body() + b"\n\ndata: [DONE]\n\n"})

    def _note_adapter_use(self) -> None:
        """A request for an adapter vLLM does not hold waits for it to load: counted, and an event on its span."""
        adapters = self.state.adapters
        if adapters is None or self.tenant in (self.state.models[0], instrumentation.UNKNOWN_MODEL):
            return
        if adapters.use(self.tenant) and not is_probe(self.scope):
            self.state.metrics.lora_cold_starts.labels(model=self.tenant).inc()
            if self.pending is not None:
                self.pending.events.append(("lora.cold_start", {"gen_ai.request.model": self.tenant,
                                                                "vllm.max_loras": adapters.capacity}))

    def _admit(self, sequences: int) -> None:
        if not self.state.admits(sequences):
            limit = self.state.limits.max_waiting_requests
            raise Refusal(429, f"server overloaded: more than {limit} requests waiting; retry later",
                          "TooManyRequestsError", (RETRY_AFTER,))

    async def _read_body(self, receive: Receive) -> Receive:
        """Read the body (to learn its tenant and shape) within the size and time limits, admit its sequences
        before vLLM tokenises anything, then hand the body to vLLM as it came."""
        limits = self.state.limits
        messages: list[Message] = []
        size = 0
        try:
            async with asyncio.timeout(limits.body_timeout_s):
                while True:
                    message = await receive()
                    messages.append(message)
                    if message["type"] != "http.request":
                        self.disconnected = message["type"] == "http.disconnect"
                        break
                    size += len(message.get("body", b""))
                    if limits.max_body_bytes is not None and size > limits.max_body_bytes:
                        raise Refusal(413, f"request body over {limits.max_body_bytes} bytes", "BadRequestError",
                                      ((b"connection", b"close"),))
                    if not message.get("more_body"):
                        break
        except TimeoutError:
            raise Refusal(408, f"the request body did not arrive within {limits.body_timeout_s:g} s",
                          "BadRequestError", ((b"connection", b"close"),)) from None
        try:
            parsed = json.loads(b"".join(message.get("body", b"") for message in messages))
        except ValueError as exc:  # vLLM's refusal of some (an integer of 5,000 digits) is not in its error shape
            raise Refusal(400, f"request body is not valid JSON: {exc}", "BadRequestError") from None
        except RecursionError:  # vLLM's own parser fails on it the same way, with a 500
            raise Refusal(400, "request body nests deeper than the JSON parser goes", "BadRequestError") from None
        parsed = parsed if isinstance(parsed, dict) else {}
        self.tenant = self.state.tenant(parsed.get("model", self.state.models[0]))  # vLLM's default: the base
        if self.state.refuse_prompt_logprobs and asks_prompt_logprobs(parsed, self.endpoint == CHAT):
            raise Refusal(400, PROMPT_LOGPROBS_REFUSAL, "BadRequestError")
        request_id = _header(self.scope, REQUEST_ID)
        if request_id is None:
            request_id = uuid.uuid4().hex.encode()
            self.scope["headers"] = [*self.scope.get("headers", ()), (REQUEST_ID, request_id)]
        prompts, n = shape_of(parsed, self.endpoint == CHAT)
        self._admit(prompts * n)  # before vLLM tokenises the prompt: overload costs no tokenizer time
        self.state.active_sequences += prompts * n
        chat = self.endpoint == CHAT
        self.pending = PendingRequest(request_id.decode("latin-1"), self.tenant, self.started, prompts, n,
                                      streamed=parsed.get("stream") is True, chat=chat,
                                      attributes=genai_attributes(parsed), server_span=self.span)
        self.state.join.start(self.pending)

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()
        return replay

    def _receive(self, receive: Receive) -> Receive:
        async def watched() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" and not self.done:
                self.disconnected = True
            return message
        return watched

    def _send(self, send: Send) -> Send:
        held: list[Message] = []  # an error answer, until its whole body is in (in_openai_shape)

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                self._started(message)
                if self.status >= 400 and _is_json(message):
                    held.append(message)
                    return
            elif held:  # the body of an error answer
                held.append(message)
                if message.get("more_body"):
                    return
                start, *parts = held
                held.clear()
                body = in_openai_shape(self.status, b"".join(part.get("body", b"") for part in parts))
                start["headers"] = [(key, value) for key, value in start["headers"] if key.lower() != b"content-length"]
                await send({**start, "headers": [*start["headers"], (b"content-length", str(len(body)).encode())]})
                message = {"type": "http.response.body", "body": body}
            elif message["type"] == "http.response.body":
                await self._watch_stream(message.get("body", b""))
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self.done = True
            await send(message)
        return watched

    def _started(self, message: Message) -> None:
        """The response's status, and the headers we add: the trace id, and RFC 6750's on a 401 (vLLM sends none)."""
        self.status = message["status"]
        headers = list(message.get("headers", ()))
        if self.status == 401 and not any(key.lower() == b"www-authenticate" for key, _ in headers):
            headers.append(WWW_AUTHENTICATE)
        trace_id = self.state.tracer.trace_id_of(self.span)
        if trace_id:  # for pasting into Jaeger
            headers.append((TRACE_ID, trace_id.encode()))
        message["headers"] = headers

    async def _watch_stream(self, chunk: bytes) -> None:
        """A streamed answer's chunk: the first token the client gets, an error event, an injected slow stream."""
        pending = self.pending
        if pending is None or not pending.streamed or not chunk:
            return
        token = carries_token(chunk) if pending.first_token_at is None or self._token_delay() else False
        if token and self._token_delay():
            await asyncio.sleep(self._token_delay())  # a slow stream, as the client sees it
        if pending.first_token_at is None and token:
            pending.first_token_at = time.monotonic()
        failed = stream_error(chunk)
        if failed is not None:
            self.status = failed

    def _token_delay(self) -> float:
        """The injected delay per streamed token, for this request's tenant (0: none)."""
        faults = self.state.faults
        if faults is None or not faults.token_delay_s or not faults.applies_to(self.tenant):
            return 0.0
        return faults.token_delay_s

    def _finish(self) -> None:
        status = self.status if self.done and self.status is not None else (
            CLIENT_CLOSED_REQUEST if self.disconnected or self.status is None else self.status)
        self.state.http_finished(self.endpoint, status, self.tenant, time.monotonic() - self.started,
                                 is_probe(self.scope), self.pending, self.state.tracer.trace_id_of(self.span))
        if self.span is not None:  # after the join has its end: the GenAI span ends inside this one
            self.state.tracer.end_server_span(self.span, status)
        if self.pending is not None and not self.pending.judged:
            asyncio.get_running_loop().call_later(ENGINE_VIEW_GRACE_S + 0.1, self.state.join.expire)
