"""The engine's listeners apart from vLLM's API port: the admin listener and, optionally, /metrics.

The admin listener (fault injection, for tests and demos) is off unless `--admin-port` is given, on its
own port so no NetworkPolicy that opens the API to clients opens it too, and guarded by its own token
(`--admin-token-file`), never the clients' API key: a client who can call the API cannot fail other
clients' requests. Its requests are not the users' and are not counted as theirs.

`--metrics-port` serves /metrics on a port of its own, so a NetworkPolicy can open the API to clients and
/metrics to Prometheus and the sidecar only.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
from typing import Any, Awaitable, Callable

from aiohttp import web

from .asgi import error_body
from .faults import FaultInjector, FaultSettingError
from .metrics import exposition
from .worker_faults import WORKER_FAULTS

log = logging.getLogger(__name__)

FAULTS_KEY = web.AppKey("faults", FaultInjector)
TOKEN_KEY = web.AppKey("admin_token", str)
ENGINE_KEY = web.AppKey("engine_client", object)  # vLLM's AsyncLLM
MODEL_FAULTS_KEY = web.AppKey("model_faults", dict)
MAX_ADMIN_BODY_BYTES = 64 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> web.Response:
    """An error in the shape vLLM's API answers in."""
    return web.Response(body=error_body(message, code, code), status=status, headers=headers,
                        content_type="application/json")


def bearer_matches(authorization: str, secret: str) -> bool:
    """Whether an 'Authorization: Bearer X' header carries `secret` (compared in constant time)."""
    scheme, _, supplied = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(supplied.strip().encode(), secret.encode())


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own 4xx (an unknown route, a wrong method, a body too large) as a JSON error."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if not 400 <= exc.status < 500:
            raise
        allow = {name: value for name, value in exc.headers.items() if name == "Allow"}
        return json_error(exc.status, f"{exc.reason}: {request.method} {request.path}",
                          exc.reason.lower().replace(" ", "_"), allow)


@web.middleware
async def admin_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not bearer_matches(request.headers.get("Authorization", ""), request.app[TOKEN_KEY]):
        return json_error(401, "missing or invalid admin token; send 'Authorization: Bearer <token>'",
                          "invalid_admin_token", {"WWW-Authenticate": "Bearer"})
    return await handler(request)


async def fault_injection(request: web.Request) -> web.Response:
    faults = request.app[FAULTS_KEY]
    if request.method == "POST":
        try:
            body = json.loads(await request.read())
        except (ValueError, RecursionError):
            return json_error(400, "request body is not valid JSON", "invalid_json")
        try:
            faults.configure(body)
        except FaultSettingError as exc:
            return json_error(400, str(exc), "invalid_value")
        log.warning("fault injection set: %s", faults.state())
    return web.json_response(faults.state())


MODEL_FAULT_FIELDS = ("scale", "nan_logits")
SCALE_FIELDS = ("parameter", "factor")


def model_fault_settings(body: Any) -> tuple[str | None, float, bool]:
    """(parameter, factor, nan_logits) from a body like {"scale": {"parameter": "model.norm.weight", "factor": 1.1},
    "nan_logits": false}; a missing field is no fault. Raises FaultSettingError naming the field."""
    if not isinstance(body, dict) or set(body) - set(MODEL_FAULT_FIELDS):
        raise FaultSettingError(f"expected an object with at most the fields {', '.join(MODEL_FAULT_FIELDS)}")
    nan_logits = body.get("nan_logits", False)
    if not isinstance(nan_logits, bool):
        raise FaultSettingError("nan_logits: expected true or false")
    scale = body.get("scale")
    if scale is None:
        return None, 1.0, nan_logits
    if not isinstance(scale, dict) or set(scale) != set(SCALE_FIELDS):
        raise FaultSettingError("scale: expected {\"parameter\": NAME, \"factor\": NUMBER}, or null")
    parameter, factor = scale["parameter"], scale["factor"]
    if not isinstance(parameter, str) or not parameter:
        raise FaultSettingError("scale.parameter: expected a parameter name, like model.norm.weight")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor):
        raise FaultSettingError("scale.factor: expected a finite number")
    return parameter, float(factor), nan_logits


async def model_faults(request: web.Request) -> web.Response:
    """Corrupted weights or NaN logits in the running model, through vLLM's collective_rpc (worker_faults.py)."""
    engine_client = request.app[ENGINE_KEY]
    if request.method == "GET":
        return web.json_response(request.app[MODEL_FAULTS_KEY])
    try:
        settings = model_fault_settings(json.loads(await request.read()))
    except (ValueError, RecursionError) as exc:  # FaultSettingError is a ValueError
        message = str(exc) if isinstance(exc, FaultSettingError) else "request body is not valid JSON"
        return json_error(400, message, "invalid_value")
    try:
        states = await engine_client.collective_rpc("slo_set_model_faults", args=settings)
    except Exception as exc:  # the worker's ValueError (no such parameter), or a worker without our extension
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "slo_set_model_faults" in str(exc) and "no parameter" not in str(exc):
            reason = f"vLLM was started without --worker-extension-cls {WORKER_FAULTS}"
        return json_error(409, f"cannot set the model faults: {reason}", "model_faults_unavailable")
    request.app[MODEL_FAULTS_KEY].update(states[0])
    log.warning("model faults set: %s", states[0])
    return web.json_response(states[0])


def build_admin_app(faults: FaultInjector, token: str, engine_client: Any = None) -> web.Application:
    app = web.Application(middlewares=[json_errors, admin_token], client_max_size=MAX_ADMIN_BODY_BYTES)
    app[FAULTS_KEY] = faults
    app[TOKEN_KEY] = token
    app.router.add_get("/admin/fault-injection", fault_injection)
    app.router.add_post("/admin/fault-injection", fault_injection)
    if engine_client is not None:
        app[ENGINE_KEY] = engine_client
        app[MODEL_FAULTS_KEY] = {"scaled": None, "nan_logits": False}
        app.router.add_get("/admin/model-faults", model_faults)
        app.router.add_post("/admin/model-faults", model_faults)
    return app


def build_metrics_app(registry: Any) -> web.Application:
    """/metrics alone: the registry vLLM's own /metrics serves, in whichever format the scraper asks for."""
    async def metrics(request: web.Request) -> web.Response:
        body, content_type = await exposition(registry, request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application(middlewares=[json_errors])
    app.router.add_get("/metrics", metrics)
    return app


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
