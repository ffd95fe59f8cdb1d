"""The OpenAI-compatible HTTP API around the vLLM backend.

Handlers stay thin: validation is in protocol.py, vLLM is behind backend.py.
One middleware owns what every request shares: the API key, the error body
shape, and the request metrics, so no handler can forget them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry import trace
from prometheus_client import REGISTRY

from slo_spec.model import PROBE_HEADER

from .backend import GenerationTally, VllmBackend
from .faults import FaultInjector, InjectedFault
from .health import AcceleratorMemoryProbe, Phase, evaluate_health
from .adapter_cache import AdapterResidency
from .metrics import CLIENT_CLOSED_REQUEST, GENERATION_ENDPOINTS, UNKNOWN_MODEL, ServerMetrics, choose_exposition
from .protocol import (
    ApiError,
    Choice,
    GenerationRequest,
    Kind,
    StreamEncoder,
    bearer_matches,
    check_context_length,
    full_response,
    parse_generation_request,
    parse_json_body,
)
from .settings import EngineSettings
from .slo_judge import SloJudge
from .tracing import RequestTracer

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Set by a handler whose response already went out when the request failed
# (a stream that broke mid-way): the status the request is counted under.
OUTCOME_CODE = "slo_outcome_code"
SERVER_SPAN = "slo_server_span"
# The served name (base model or adapter) a generation request asked for, once it is known valid.
TENANT = "slo_tenant"
TRACE_ID_HEADER = "X-Trace-Id"
RETRY_AFTER_S = "1"


@dataclass
class EngineState:
    """What the server knows about itself; shared by handlers and the lifecycle."""

    settings: EngineSettings
    served_model_name: str
    metrics: ServerMetrics
    backend: VllmBackend | None = None
    phase: Phase = "loading"
    active_generations: int = 0
    active_sequences: int = 0  # admitted sequences not yet finished (a request with n > 1 counts n)
    started_at: int = field(default_factory=lambda: int(time.time()))
    faults: FaultInjector = field(default_factory=FaultInjector)  # its `served` set from models at start
    memory_probe: AcceleratorMemoryProbe = field(default_factory=AcceleratorMemoryProbe)
    tracer: RequestTracer = field(default_factory=lambda: RequestTracer(None))
    generations_idle: asyncio.Event = field(default_factory=asyncio.Event)
    judge: SloJudge | None = None
    api_key: str | None = None  # read once at start (from --api-key-file or --api-key)
    adapter_residency: AdapterResidency | None = None  # set when adapters are served

    @property
    def adapters(self) -> tuple[str, ...]:
        """The LoRA adapters' names, which clients send as `model` beside the base model's."""
        return tuple(module.name for module in self.settings.lora_modules)

    def set_phase(self, phase: Phase) -> None:
        self.phase = phase
        self.metrics.ready.set(1 if phase == "ready" else 0)


STATE_KEY = web.AppKey("engine_state", EngineState)


def json_error(error: ApiError) -> web.Response:
    return web.json_response(error.body(), status=error.status, headers=error.headers)


def route_error(request: web.Request, exc: web.HTTPException) -> ApiError:
    """aiohttp's own 4xx (unknown route, wrong method) as our error body, keeping its Allow header."""
    return ApiError(exc.status, f"{exc.reason}: {request.method} {request.path}",
                    code=exc.reason.lower().replace(" ", "_"),
                    headers={k: v for k, v in exc.headers.items() if k == "Allow"})


def is_probe(request: web.Request) -> bool:
    """A request from the pod's own sidecar (marked, and from loopback: a client outside the pod cannot
    hide its requests from the SLOs this way). It is served as any other, but not counted as a user's."""
    if request.headers.get(PROBE_HEADER) != "1" or request.remote is None:
        return False
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(request.remote).is_loopback
    return False


def tenant_of(request: web.Request, endpoint: str) -> str:
    """The `model` label of a request: its served name on a generation endpoint (UNKNOWN_MODEL until
    the body named a served one), empty elsewhere."""
    return request.get(TENANT, UNKNOWN_MODEL) if endpoint in GENERATION_ENDPOINTS else ""


def endpoint_of(request: web.Request) -> str:
    """The route template, so unknown paths cannot blow up label cardinality."""
    route = request.match_info.route
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else "other"


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    metrics = state.metrics
    endpoint = endpoint_of(request)
    started = time.perf_counter()
    in_flight = metrics.in_flight.labels(endpoint=endpoint)
    in_flight.inc()
    code = 500
    span, attached = None, None
    if state.tracer.enabled and request.path.startswith("/v1/"):
        span = state.tracer.start_server_span(request.method, endpoint, request.path, request.headers,
                                              request.host)
        request[SERVER_SPAN] = span
        attached = otel_context.attach(trace.set_span_in_context(span))
    try:
        _check_api_key(request, state.api_key)
        response = await handler(request)
        code = request.get(OUTCOME_CODE, response.status)
        return response
    except ApiError as error:
        metrics.record_error(error.reason, tenant_of(request, endpoint))
        code = error.status
        return json_error(error)
    except web.HTTPException as exc:  # aiohttp's own: unknown route, wrong method
        code = exc.status
        if not 400 <= exc.status < 500:
            raise
        metrics.record_error("validation", tenant_of(request, endpoint))
        return json_error(route_error(request, exc))
    except asyncio.CancelledError:
        # aiohttp cancels the handler when the client disconnects.
        code = CLIENT_CLOSED_REQUEST
        metrics.record_error("client_disconnect", tenant_of(request, endpoint))
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        metrics.record_error("engine_error", tenant_of(request, endpoint))
        return json_error(ApiError(500, "internal server error", code="internal_error",
                                   error_type="server_error", reason="engine_error"))
    finally:
        in_flight.dec()
        trace_id = state.tracer.trace_id_of(span)
        metrics.duration.labels(endpoint=endpoint).observe(
            time.perf_counter() - started, exemplar={"trace_id": trace_id} if trace_id else None)
        if not is_probe(request):
            metrics.requests.labels(endpoint=endpoint, code=str(code), model=tenant_of(request, endpoint)).inc()
        if span is not None:
            state.tracer.end_server_span(span, code)
            otel_context.detach(attached)


async def add_trace_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """Every traced response names its trace, for pasting into Jaeger."""
    trace_id = request.app[STATE_KEY].tracer.trace_id_of(request.get(SERVER_SPAN))
    if trace_id:
        response.headers[TRACE_ID_HEADER] = trace_id


def _check_api_key(request: web.Request, api_key: str | None) -> None:
    """'Authorization: Bearer KEY' on the API routes (the probes and /metrics need none)."""
    if not api_key or not request.path.startswith("/v1/"):
        return
    if not bearer_matches(request.headers.get("Authorization", ""), api_key):
        raise ApiError(401, "missing or invalid API key; send 'Authorization: Bearer <key>'",
                       code="invalid_api_key", error_type="authentication_error", reason="unauthorized",
                       headers={"WWW-Authenticate": "Bearer"})


# --- Probes and metrics --------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    memory = await asyncio.get_running_loop().run_in_executor(None, state.memory_probe.read)
    backend_dead = state.backend is not None and state.backend.dead
    report = evaluate_health(state.phase, backend_dead, memory)
    return web.json_response(report.body(), status=report.http_status)


async def ready(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    is_ready = state.phase == "ready" and not (state.backend is not None and state.backend.dead)
    status = "ready" if is_ready else ("failed" if state.phase == "ready" else state.phase)
    return web.json_response({"status": status}, status=200 if is_ready else 503)


async def metrics_endpoint(request: web.Request) -> web.Response:
    encoder, content_type = choose_exposition(request.headers.get("Accept", ""))
    body = await asyncio.get_running_loop().run_in_executor(None, encoder, REGISTRY)
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    max_len = state.backend.max_model_len if state.backend else state.settings.max_model_len
    base = {"id": state.served_model_name, "object": "model", "created": state.started_at,
            "owned_by": "slo-sidecar", "parent": None, "max_model_len": max_len}
    # Each adapter as vLLM's server lists it: a model whose parent is the base model.
    adapters = [{**base, "id": name, "parent": state.served_model_name} for name in state.adapters]
    return web.json_response({"object": "list", "data": [base, *adapters]})


# --- Generation ----------------------------------------------------------------------------


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "completion")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "chat")


async def _read_body(request: web.Request) -> bytes:
    """The whole body, within --body-timeout-s: a client trickling its body holds a connection, not the
    server (408, counted as the client's mistake)."""
    settings = request.app[STATE_KEY].settings
    try:
        async with asyncio.timeout(settings.body_timeout_s):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, f"request body is larger than {settings.max_body_bytes} bytes",
                       code="request_too_large") from None
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {settings.body_timeout_s:g} s",
                       code="request_timeout", headers={"Connection": "close"}) from None


def _unavailable(phase: Phase) -> ApiError:
    message = {"loading": "the model is still loading", "draining": "the server is shutting down"}.get(
        phase, "the inference engine is not running")
    # "draining" tells the sidecar's probe an orderly shutdown (the pod has left the Service's
    # endpoints; users are sent elsewhere), not an outage: its probes count nothing lost then.
    code = "draining" if phase == "draining" else "unavailable"
    return ApiError(503, message, code=code, error_type="server_error", reason="unavailable",
                    headers={"Retry-After": RETRY_AFTER_S})


async def _generate(request: web.Request, kind: Kind) -> web.StreamResponse:
    """Serve one generation request and, whatever happens to it, have it judged once at its end."""
    started_at = time.monotonic()
    state = request.app[STATE_KEY]
    tally = GenerationTally()
    failure: BaseException | None = None
    try:
        return await _serve_generation(request, kind, state, tally)
    except BaseException as exc:
        failure = exc
        raise
    finally:
        if not is_probe(request):
            tenant = request.get(TENANT, UNKNOWN_MODEL)
            if state.judge is not None:
                state.judge.record(tally, started_at, _ended_with(failure, tally), tenant)
            if tally.prompt_tokens is not None:
                state.metrics.record_tokens(tenant, tally.prompt_tokens, tally.completion_tokens)


async def _serve_generation(request: web.Request, kind: Kind, state: EngineState,
                            tally: GenerationTally) -> web.StreamResponse:
    if state.phase != "ready" or state.backend is None:
        raise _unavailable(state.phase)
    backend = state.backend
    _admit(state, 1)  # a full server says so before it reads a body
    generation = parse_generation_request(parse_json_body(await _read_body(request)), kind,
                                          state.served_model_name, state.adapters)
    request[TENANT] = generation.model
    _admit(state, generation.n)  # before the prompt is tokenised: overload costs no tokenizer time
    request_id = ("cmpl-" if kind == "completion" else "chatcmpl-") + uuid.uuid4().hex
    state.active_generations += 1
    state.active_sequences += generation.n
    state.generations_idle.clear()
    tally.sequences = generation.n
    failure: BaseException | None = None
    try:
        token_ids = await backend.tokenize(generation)
        max_tokens = check_context_length(generation, len(token_ids), backend.max_model_len)
    except BaseException:
        _release(state, generation.n)
        raise
    tally.prompt_tokens = len(token_ids)
    with state.tracer.generation_span(generation, request_id, max_tokens) as span:
        _note_adapter_use(state, generation.model, span, request)
        try:
            async with asyncio.timeout(state.settings.request_timeout_s) as deadline:
                steps = _steps_with_faults(state, backend, generation, token_ids, max_tokens, request_id)
                if generation.stream:
                    return await _stream(request, generation, request_id, len(token_ids), steps, deadline, tally)
                return await _respond_whole(generation, request_id, len(token_ids), steps, tally)
        except TimeoutError:
            failure = _timeout_error(state)
            raise failure from None
        except BaseException as exc:
            failure = exc
            raise
        finally:
            _release(state, generation.n)
            state.tracer.finish_generation(span, tally, len(token_ids), failure)


def _note_adapter_use(state: EngineState, model: str, span: trace.Span, request: web.Request) -> None:
    """A request for an adapter vLLM does not hold waits for it to load: counted, and an event on its span."""
    if state.adapter_residency is None or model == state.served_model_name:
        return
    if state.adapter_residency.use(model) and not is_probe(request):
        state.metrics.lora_cold_starts.labels(model=model).inc()
        span.add_event("lora.cold_start", {"gen_ai.request.model": model,
                                           "vllm.max_loras": state.settings.max_loras})


def _release(state: EngineState, n: int) -> None:
    """A generation's admission given back (it ended, or failed before it started)."""
    state.active_generations -= 1
    state.active_sequences -= n
    if state.active_generations == 0:
        state.generations_idle.set()


def _ended_with(failure: BaseException | None, tally: GenerationTally) -> int | None:
    """The status a generation ended with, None if it succeeded (a stream can fail after its 200)."""
    if isinstance(failure, asyncio.CancelledError):
        return CLIENT_CLOSED_REQUEST
    if isinstance(failure, ApiError):
        return failure.status
    if failure is not None:
        return 500
    return tally.error.status if tally.error is not None else None


def _admit(state: EngineState, n: int) -> None:
    """429 when more sequences would wait than the admission limit allows.

    Counted here, not read from vLLM: the check and the count change happen with
    no await between them, so a burst cannot slip past the limit together.
    """
    limit = state.settings.max_num_seqs + state.settings.max_waiting_requests
    if state.active_sequences + n > limit:
        raise ApiError(
            429,
            f"server overloaded: more than {state.settings.max_waiting_requests} requests waiting; retry later",
            code="queue_full", error_type="rate_limit_error", reason="overload",
            headers={"Retry-After": RETRY_AFTER_S},
        )


def _timeout_error(state: EngineState) -> ApiError:
    return ApiError(504, f"request exceeded the {state.settings.request_timeout_s:g} s timeout",
                    code="timeout", error_type="server_error", reason="timeout")


async def _steps_with_faults(state: EngineState, backend: VllmBackend, generation: GenerationRequest,
                             token_ids: list[int], max_tokens: int, request_id: str):
    """The backend's steps, with any injected delay or failure (tests and demos only)."""
    faults = state.faults if state.settings.admin_port is not None else None
    if faults is not None and not faults.applies_to(generation.model):
        faults = None
    if faults is not None:
        if faults.delay_s:
            await asyncio.sleep(faults.delay_s)
        if faults.should_fail():
            raise InjectedFault()
    async with contextlib.aclosing(backend.generate(generation, token_ids, max_tokens, request_id)) as steps:
        async for step in steps:
            if faults is not None and faults.token_delay_s:
                await asyncio.sleep(faults.token_delay_s * sum(d.num_tokens for d in step.choices))
            yield step


def _injected_fault_error() -> ApiError:
    return ApiError(500, "injected fault: fault injection is enabled on this engine", code="injected_fault",
                    error_type="server_error", reason="engine_error")


async def _respond_whole(generation: GenerationRequest, request_id: str, prompt_tokens: int,
                         steps, tally: GenerationTally) -> web.Response:
    texts = [""] * generation.n
    try:
        async with contextlib.aclosing(steps):
            async for step in steps:
                tally.add(step)
                for delta in step.choices:
                    texts[delta.index] += delta.text
    except InjectedFault:
        raise _injected_fault_error() from None
    choices = [Choice(i, text, tally.finish_reasons.get(i)) for i, text in enumerate(texts)]
    body = full_response(generation, request_id, int(time.time()), choices, prompt_tokens, tally.completion_tokens)
    return web.json_response(body)


async def _stream(request: web.Request, generation: GenerationRequest, request_id: str, prompt_tokens: int,
                  steps, deadline: asyncio.Timeout, tally: GenerationTally) -> web.StreamResponse:
    """Server-sent events; failures after the headers went out end the stream with an error event."""
    state = request.app[STATE_KEY]
    encoder = StreamEncoder(generation, request_id)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    try:
        async with contextlib.aclosing(steps):
            async for step in steps:
                tally.add(step)
                chunks = []
                if not response.prepared:  # headers go out with the first token, so earlier errors get a status
                    await response.prepare(request)
                    if generation.kind == "chat":
                        chunks.extend(encoder.role_chunk(i) for i in range(generation.n))
                for delta in step.choices:
                    chunks.append(encoder.delta_chunk(delta.index, delta.text, delta.finish_reason))
                await response.write(b"".join(chunks))
            if generation.include_usage:
                await response.write(encoder.usage_chunk(prompt_tokens, tally.completion_tokens))
            await response.write(StreamEncoder.DONE)
            await response.write_eof()
        return response
    except ConnectionError:
        request[OUTCOME_CODE] = CLIENT_CLOSED_REQUEST
        state.metrics.record_error("client_disconnect", generation.model)
        tally.error = ApiError(CLIENT_CLOSED_REQUEST, "the client went away mid-stream", reason="client_disconnect")
        return response
    except asyncio.CancelledError:
        if not deadline.expired():
            raise  # the client went away: the middleware counts it
        error = _timeout_error(state)
    except InjectedFault:
        error = _injected_fault_error()
    except ApiError as exc:
        error = exc
    if not response.prepared:
        raise error
    state.metrics.record_error(error.reason, generation.model)
    request[OUTCOME_CODE] = error.status
    tally.error = error
    with contextlib.suppress(ConnectionError):
        await response.write(StreamEncoder.error_event(error) + StreamEncoder.DONE)
        await response.write_eof()
    return response


def build_metrics_app() -> web.Application:
    """/metrics alone, for --metrics-port."""
    app = web.Application()
    app.router.add_get("/metrics", metrics_endpoint)
    return app


def build_app(state: EngineState) -> web.Application:
    app = web.Application(middlewares=[api_middleware], client_max_size=state.settings.max_body_bytes)
    app[STATE_KEY] = state
    app.on_response_prepare.append(add_trace_id_header)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    if state.settings.metrics_port is None:
        app.router.add_get("/metrics", metrics_endpoint)
    return app
