"""The demo's live view: a Prometheus that does not answer shows as "?", it does not end the demo."""

from __future__ import annotations

import socket
import threading
from typing import Callable

import pytest
from aiohttp import web

from slo_sidecar.app.demo import LiveView
from slo_sidecar.app.processes import PrometheusProcess
from slo_sidecar.spec.load import DEFAULT_SPEC, load_spec
from tests.threaded_server import ThreadedServer

SPEC = load_spec(str(DEFAULT_SPEC))


class Unavailable(ThreadedServer):
    """Answers every request 503."""

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/{path:.*}", self._busy)

    async def _busy(self, request: web.Request) -> web.Response:
        return web.Response(status=503, text="busy")


def serve_503() -> tuple[str, Callable[[], None]]:
    """Answers every request 503; returns (url, stop)."""
    server = Unavailable().start()
    return server.url, server.stop


def serve_hang_up() -> tuple[str, Callable[[], None]]:
    """Accepts each connection and closes it without a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def hang_up() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            connection.close()

    threading.Thread(target=hang_up, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", listener.close


@pytest.mark.parametrize("serve", [serve_503, serve_hang_up])
def test_live_view_shows_unanswered_queries_as_question_marks(tmp_path, serve):
    url, stop = serve()
    prometheus = PrometheusProcess(tmp_path, {}, [])  # never started: it asks the server above
    prometheus.url = url
    view = LiveView(prometheus, SPEC, list(SPEC.slos[:2]))
    try:
        line = view.line(12.0, "healthy")
    finally:
        stop()
    cells = [cell for cell in line.split() if cell != "|"]
    assert cells[0] == "12s" and cells[-1] == "healthy"
    # req/s and the queue, three values per watched SLO, and each one's page state
    assert cells[1:-1] == ["?"] * (2 + 3 * 2 + 2), line
    assert view.states_seen == {"availability": {}, "ttft": {}}  # an unknown state is not a state an alert was in
    assert not view.has_data, "no line is shown as live data until Prometheus answers with values"
