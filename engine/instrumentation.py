"""Our instrumentation inside vLLM's own OpenAI server: the one object the ASGI middleware and the
stat-logger plugin share in the API server's process.

vLLM builds both with no arguments of ours (`--middleware CLASS`, and an entry point for the plugin), so
they meet here, set up once when the server starts (the ASGI lifespan: vLLM's app state knows the served
names by then). Configuration comes from the environment, as vLLM's own plugins take it:
`SLO_ENGINE_SLO`, the spec whose latency and goodput targets every request is judged against (default:
the embedded one), and `SLO_ENGINE_TRACE_EXPORTER` (otlp, console or none; default otlp when an OTLP
endpoint is configured) with the OTEL_* variables for the request → queue → prefill → decode spans.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from prometheus_client import REGISTRY, CollectorRegistry

from slo_sidecar.iokit import settings as check
from slo_sidecar.iokit.settings import SettingsError, from_environ
from slo_sidecar.iokit.files import read_secret

from slo_sidecar.spec import __version__
from slo_sidecar.spec.load import DEFAULT_SPEC, load_spec

from .adapter_cache import AdapterResidency
from .faults import FaultInjector
from .metrics import CLIENT_CLOSED_REQUEST, UNKNOWN_MODEL, ConstantLabels, ServerMetrics
from .request_join import EngineView, PendingRequest, RequestJoin
from .settings import ENV_PREFIX, default_trace_exporter
from .slo_judge import SloJudge
from .tracing import setup_tracing

log = logging.getLogger(__name__)

# The vLLM release line the middleware and the stat-logger plugin are built and tested against (both extras in
# pyproject.toml pin it): the stats and app state they read are interfaces vLLM calls unstable.
VLLM_RELEASE_LINE = "0.32"

ALL_INTERFACES = "0.0.0.0"

SPEC_ENV = ENV_PREFIX + "SLO"
TRACE_EXPORTER_ENV = ENV_PREFIX + "TRACE_EXPORTER"
VLLM_HTTP_SERIES_ENV = ENV_PREFIX + "VLLM_HTTP_SERIES"  # "off": drop vLLM's duplicate HTTP series (the launcher's)

# Why a request failed, by the status it ended with (metrics.ERROR_REASONS).
REASONS = {401: "unauthorized", 403: "unauthorized", 429: "overload", 499: "client_disconnect", 503: "unavailable",
           504: "timeout"}  # any other 4xx (a body too slow, 408, included) is the client's: validation


def reason_of(status: int) -> str | None:
    """The error reason of a status; None for a success."""
    if status < 400:
        return None
    return REASONS.get(status, "validation" if status < 500 else "engine_error")


# The middleware's limits, as SLO_ENGINE_<NAME> variables: name -> (check, help).
LIMIT_SETTINGS = {
    "max_waiting_requests": (check.count, "sequences admitted beyond --max-num-seqs before a 429"),
    "max_body_bytes": (check.positive_int, "a larger generation request body: 413"),
    "body_timeout_s": (check.positive_number, "a generation request body slower than this: 408"),
    "request_timeout_s": (check.positive_number, "a generation request running longer: 504"),
    "admin_port": (check.port, "the fault-injection listener (tests and demos only)"),
    "admin_token_file": (check.string, "its token, which it requires"),
    "metrics_port": (check.port, "/metrics on a port of its own, and not on the API's"),
    "metrics_host": (check.string, "where that listener listens"),
}


@dataclass(frozen=True)
class Limits:
    """What the middleware refuses before vLLM sees a request; None: no limit of ours (vLLM's own apply).

    Inside a user's own `vllm serve` each is off unless its SLO_ENGINE_* variable sets it; `slo-sidecar
    engine` sets them from its flags."""

    max_waiting_requests: int | None = None  # sequences admitted beyond --max-num-seqs before a 429
    max_body_bytes: int | None = None  # a larger generation request body: 413
    body_timeout_s: float | None = None  # a generation request body slower than this: 408
    request_timeout_s: float | None = None  # a generation request running longer: 504 (mid-stream: an error event)
    admin_port: int | None = None  # FOR TESTS AND DEMOS: the fault-injection listener (engine/admin.py)
    admin_token_file: str | None = None  # its token, which it requires
    metrics_port: int | None = None  # /metrics on a port of its own, and not on the API's
    metrics_host: str = ALL_INTERFACES  # where that listener listens

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> "Limits":
        """Read by the project's one settings loader (errors name the variable, the setting and why)."""
        limits = cls(**from_environ(environ, ENV_PREFIX, LIMIT_SETTINGS))
        if (limits.admin_port is None) != (limits.admin_token_file is None):
            raise SettingsError(f"environment variables {ENV_PREFIX}ADMIN_PORT and {ENV_PREFIX}ADMIN_TOKEN_FILE",
                                "admin_port", "they go together: the fault-injection listener requires its own token")
        return limits

    def admin_token(self) -> str | None:
        """The admin listener's token, read from its file (None without a listener)."""
        if self.admin_token_file is None:
            return None
        try:
            return read_secret(self.admin_token_file)
        except ValueError as exc:
            raise SettingsError(f"{ENV_PREFIX}ADMIN_TOKEN_FILE {self.admin_token_file}", "admin_token_file",
                                str(exc)) from None


def waiting_limit(ours: int | None, max_num_seqs: int, max_num_queued_reqs: int | None) -> int | None:
    """The requests the server lets wait before it refuses more: ours where set, else what vLLM's own limit on
    unfinished requests leaves beyond those running, else None (no limit: no series)."""
    if ours is not None:
        return ours
    return None if max_num_queued_reqs is None else max(0, max_num_queued_reqs - max_num_seqs)


class Instrumentation:
    """The engine's own series and the per-request join, for one served model and its adapters."""

    def __init__(self, models: tuple[str, ...], max_num_seqs: int, registry: CollectorRegistry | None = None,
                 max_num_queued_reqs: int | None = None):
        """models: the served names, the base model's first; max_num_seqs: vLLM's, the sequences it runs
        at once; max_num_queued_reqs: vLLM's own admission limit, if set. Raises SettingsError or SpecError
        for a bad SLO_ENGINE_* variable or spec."""
        self.models = models
        self.own = registry or CollectorRegistry()
        self.limits = Limits.from_environ(os.environ)
        self.max_num_seqs = max_num_seqs
        self.active_sequences = 0  # admitted generation sequences not yet answered (n per prompt)
        spec = load_spec(os.environ.get(SPEC_ENV) or str(DEFAULT_SPEC))
        self.metrics = ServerMetrics(self.own, models=models, max_waiting_requests=waiting_limit(
            self.limits.max_waiting_requests, max_num_seqs, max_num_queued_reqs))
        self.judge = SloJudge(spec, self.own, models)
        self.tracer = setup_tracing(os.environ.get(TRACE_EXPORTER_ENV) or default_trace_exporter(os.environ),
                                    __version__, models[0], self.own)
        self.join = RequestJoin(self._judged)
        # Set through the admin listener: there are none without one.
        self.faults = FaultInjector(served=models) if self.limits.admin_port is not None else None
        self.ready = False  # once vLLM serves (the ASGI lifespan started), until it stops
        self.refuse_prompt_logprobs = False  # vLLM's LoRA may cover lm_head (prompt_logprobs_guard)
        self.adapters: AdapterResidency | None = None  # vLLM's LoRA adapter cache, as requests use it
        self.stopping = False  # vLLM began an orderly shutdown (SIGTERM): draining
        self.died = False  # vLLM's engine core was seen dead while it served, not stopped: the launcher exits 1

    def admits(self, sequences: int) -> bool:
        """Whether `sequences` more fit under the admission limit (always, without one). Checked and counted
        with no await between, so a burst cannot slip past it together."""
        limit = self.limits.max_waiting_requests
        return limit is None or self.active_sequences + sequences <= self.max_num_seqs + limit

    def tenant(self, model: object) -> str:
        """The `model` label of a request that named `model`: a served name, else UNKNOWN_MODEL."""
        return model if isinstance(model, str) and model in self.models else UNKNOWN_MODEL

    def http_finished(self, endpoint: str, status: int, tenant: str, seconds: float, probe: bool,
                      pending: PendingRequest | None, trace_id: str | None = None) -> None:
        """A response's last byte went out (or the client left: 499); trace_id, when it was traced and sampled,
        goes on the duration's bucket as an exemplar (Grafana links a slow bucket to its trace)."""
        self.metrics.duration.labels(endpoint=endpoint).observe(
            seconds, exemplar={"trace_id": trace_id} if trace_id else None)
        if probe:
            if pending is not None:
                pending.probe = True
                self.join.http_finished(pending, status)
            return
        self.metrics.requests.labels(endpoint=endpoint, code=str(status), model=tenant).inc()
        reason = reason_of(status)
        if reason is not None:
            self.metrics.record_error(reason, tenant)
        if pending is not None:
            self.join.http_finished(pending, status)

    def engine_finished(self, engine_id: str, view: EngineView) -> None:
        self.join.engine_finished(engine_id, view)

    def _judged(self, request: PendingRequest) -> None:
        failed = request.status if request.status != 200 else None
        server_failed = failed is not None and (failed >= 500 or failed == CLIENT_CLOSED_REQUEST)
        self.tracer.joined_request_spans(request, reason_of(failed) if server_failed else None)
        if request.probe:
            return
        if request.status == 200:
            self.metrics.record_tokens(request.tenant, request.prompt_tokens(), request.generation_tokens())
        if request.status == CLIENT_CLOSED_REQUEST:
            return
        self.judge.count(request.latencies(), request.generation_tokens(), request.tenant,
                         None if request.status == 200 else request.status)


_current: Instrumentation | None = None
serving: Any = None  # the launcher's: set() once vLLM serves (engine/launch.py: stop while loading)


def start(models: Iterable[str], max_num_seqs: int, max_num_queued_reqs: int | None = None) -> Instrumentation:
    """Set up the process's instrumentation (once) and serve its series on vLLM's /metrics, each with
    `model_name` (the base model's served name) as vLLM's own carry it."""
    global _current
    if _current is None:
        _current = Instrumentation(tuple(dict.fromkeys(models)), max_num_seqs,
                                   max_num_queued_reqs=max_num_queued_reqs)
        REGISTRY.register(ConstantLabels(_current.own, {"model_name": _current.models[0]}))
        log.info("slo-sidecar instrumentation on: tenants %s", ", ".join(_current.models))
    return _current


def supported_vllm(version: str) -> bool:
    """Whether a vLLM version is of the release line we support (0.32.0, 0.32.1rc1+cpu, ...)."""
    return version == VLLM_RELEASE_LINE or version.startswith(VLLM_RELEASE_LINE + ".")


def unsupported_vllm_warning(version: str) -> str | None:
    """What to log at start when the installed vLLM is not the supported line; None when it is."""
    if supported_vllm(version):
        return None
    return (f"slo-sidecar supports vLLM {VLLM_RELEASE_LINE}.x; this is vLLM {version}: the request join reads "
            "interfaces vLLM calls unstable, so counts or spans may be missing. Install slo-sidecar's cpu or gpu "
            "extra for the supported vLLM.")


def current() -> Instrumentation | None:
    return _current
