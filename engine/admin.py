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
from typing import Any, Awaitable, Callable

from aiohttp import web

from .asgi import error_body
from .faults import FaultInjector, FaultSettingError
from .metrics import exposition

log = logging.getLogger(__name__)

FAULTS_KEY = web.AppKey("faults", FaultInjector)
TOKEN_KEY = web.AppKey("admin_token", str)
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


def build_admin_app(faults: FaultInjector, token: str) -> web.Application:
    app = web.Application(middlewares=[json_errors, admin_token], client_max_size=MAX_ADMIN_BODY_BYTES)
    app[FAULTS_KEY] = faults
    app[TOKEN_KEY] = token
    app.router.add_get("/admin/fault-injection", fault_injection)
    app.router.add_post("/admin/fault-injection", fault_injection)
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
