"""Requests aiohttp cannot parse as HTTP: counted and logged as the client's mistakes they are.

A request line or header past 8190 bytes, too many headers, a bad method or broken
chunking is answered 400 by aiohttp's connection handler itself, before any
middleware, and reported to its logger with a traceback. The engine gives that
handler this logger instead: such a request is counted like any other rejection
(endpoint "other", its 4xx code, reason "validation") and logged as one line at
most once a minute, so a client cannot flood the log; anything else is logged as
aiohttp would have.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.log import server_logger

from .metrics import ServerMetrics

log = logging.getLogger(__name__)

LOG_EVERY_S = 60.0


class MalformedRequestLog:
    """The `logger` aiohttp's RequestHandler reports to (it calls debug and exception)."""

    def __init__(self, metrics: ServerMetrics, clock=time.monotonic):
        self.metrics = metrics
        self.clock = clock
        self.unlogged = 0
        self.logged_at: float | None = None

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        # aiohttp reports a bad method on a connection's first request here (it is common noise).
        if not self._rejected(kwargs.get("exc_info")):
            server_logger.debug(msg, *args, **kwargs)

    def exception(self, msg: str, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        if not self._rejected(exc_info):
            server_logger.exception(msg, *args, exc_info=exc_info, **kwargs)

    def _rejected(self, exc_info: Any) -> bool:
        """Count and (rate-limited) log a client's malformed request; False for anything else."""
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1] if exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return False
        status = exc.code if isinstance(exc.code, int) and 400 <= exc.code < 500 else 400
        self.metrics.requests.labels(endpoint="other", code=str(status), model="").inc()
        self.metrics.record_error("validation")
        self.unlogged += 1
        now = self.clock()
        if self.logged_at is None or now - self.logged_at >= LOG_EVERY_S:
            reason = " ".join(str(exc.message).split())[:200]
            log.warning("rejected %d malformed HTTP request(s) with %d; the last: %s", self.unlogged, status, reason)
            self.unlogged, self.logged_at = 0, now
        return True
