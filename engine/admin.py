"""The admin listener: fault injection for tests and demos, apart from the API.

Off unless `--admin-port` is given, on its own port so no NetworkPolicy that opens
the API to clients opens it too, and guarded by its own token (`--admin-token-file`),
never the clients' API key: a client who can call the API cannot fail other
clients' requests. Its requests are not the users' and are not counted as theirs.
"""

from __future__ import annotations

import logging

from aiohttp import web

from .faults import FaultInjector
from .protocol import ApiError, bearer_matches, parse_json_body
from .server import json_error, route_error

log = logging.getLogger(__name__)

FAULTS_KEY = web.AppKey("faults", FaultInjector)
TOKEN_KEY = web.AppKey("admin_token", str)
MAX_ADMIN_BODY_BYTES = 64 * 1024


@web.middleware
async def admin_middleware(request: web.Request, handler) -> web.StreamResponse:
    """The token on every route; errors as JSON bodies, 4xx never a 5xx."""
    if not bearer_matches(request.headers.get("Authorization", ""), request.app[TOKEN_KEY]):
        return json_error(ApiError(401, "missing or invalid admin token; send 'Authorization: Bearer <token>'",
                                   code="invalid_admin_token", error_type="authentication_error",
                                   headers={"WWW-Authenticate": "Bearer"}))
    try:
        return await handler(request)
    except ApiError as error:
        return json_error(error)
    except web.HTTPException as exc:
        if not 400 <= exc.status < 500:
            raise
        return json_error(route_error(request, exc))


async def fault_injection(request: web.Request) -> web.Response:
    faults = request.app[FAULTS_KEY]
    if request.method == "POST":
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ApiError(413, f"request body is larger than {MAX_ADMIN_BODY_BYTES} bytes",
                           code="request_too_large") from None
        faults.configure(parse_json_body(body))
        log.warning("fault injection set: %s", faults.state())
    return web.json_response(faults.state())


def build_admin_app(faults: FaultInjector, token: str) -> web.Application:
    app = web.Application(middlewares=[admin_middleware], client_max_size=MAX_ADMIN_BODY_BYTES)
    app[FAULTS_KEY] = faults
    app[TOKEN_KEY] = token
    app.router.add_get("/admin/fault-injection", fault_injection)
    app.router.add_post("/admin/fault-injection", fault_injection)
    return app
