"""An HTTP server standing in for the engine's /metrics, with failures on demand.

Not a fake of the engine for behaviour tests: it serves a captured real vLLM
exposition, and breaks it in the ways a real scrape can break.
"""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from tests.threaded_server import ThreadedServer


class ExpositionServer(ThreadedServer):
    MODES = ("good", "malformed", "truncated", "too_large", "http_500", "slow")

    def __init__(self, body: str, slow_s: float = 5.0):
        super().__init__()
        self.body = body
        self.mode = "good"
        self.slow_s = slow_s

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        mode = self.mode
        if mode == "http_500":
            return web.Response(status=500, text="engine error")
        if mode == "slow":
            await asyncio.sleep(self.slow_s)
        if mode == "malformed":  # one wanted sample's value is not a number
            return web.Response(text=re.sub(r"^(vllm:num_requests_waiting\{[^}]*\}) \S+", r"\1 many",
                                            self.body, count=1, flags=re.MULTILINE))
        if mode == "truncated":
            return web.Response(text=self.body[: len(self.body) // 2])  # cut mid-line
        if mode == "too_large":
            return web.Response(text=self.body + "# padding\n" * 500_000)
        return web.Response(text=self.body)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/metrics", self._metrics)
