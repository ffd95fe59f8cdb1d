"""The engine's own settings: their defaults, and the SLO_ENGINE_* variables that carry them to the middleware.

`slo-sidecar engine` (engine/launch.py) takes them as flags and hands them on through the environment;
inside a user's own `vllm serve`, each is read from its variable (engine/instrumentation.py).
"""

from __future__ import annotations

from typing import Any

ENV_PREFIX = "SLO_ENGINE_"

TRACE_EXPORTERS = ("otlp", "jaeger", "console", "none")

DEFAULT_DRAIN_TIMEOUT_S = 30.0
DEFAULT_KV_CACHE_GIB = 1.0
DEFAULT_MAX_WAITING_REQUESTS = 256
DEFAULT_REQUEST_TIMEOUT_S = 600.0
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_BODY_TIMEOUT_S = 30.0


def default_trace_exporter(environ: Any) -> str:
    """otlp when an OTLP endpoint is configured (OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT), else none."""
    configured = any(name in environ for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    return "otlp" if configured else "none"
