"""An HTTP server standing in for the engine's /metrics, with failures on demand.

Not a fake of the engine for behaviour tests: it serves a captured real vLLM
exposition, and breaks it in the ways a real scrape can break.
"""

from __future__ import annotations

import asyncio
import re
import threading

from aiohttp import web

from slo_sidecar.processes import free_port


class ExpositionServer:
    MODES = ("good", "malformed", "truncated", "too_large", "http_500", "slow")

    def __init__(self, body: str, slow_s: float = 5.0):
        self.body = body
        self.mode = "good"
        self.slow_s = slow_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

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

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def start(self) -> "ExpositionServer":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
