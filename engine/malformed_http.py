"""Requests uvicorn cannot parse as HTTP: counted and logged as the client's mistakes they are.

A bad method, a request line or header uvicorn's parser refuses, broken chunking: uvicorn (vLLM's HTTP
server) answers 400 itself, before any middleware, and logs a warning on `uvicorn.error` for each. This
filter on that logger counts each such request like any other rejection (endpoint "other", code 400,
reason "validation") and logs them as one line at most once a minute, so a client cannot flood the log.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from .metrics import ServerMetrics

log = logging.getLogger(__name__)

UVICORN_LOGGER = "uvicorn.error"
UVICORN_MESSAGES = ("Invalid HTTP request received.",)  # what uvicorn logs as it answers 400 itself
LOG_EVERY_S = 60.0


class MalformedRequests(logging.Filter):
    def __init__(self, metrics: ServerMetrics, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.metrics = metrics
        self.clock = clock
        self.unlogged = 0
        self.logged_at: float | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        """False (not logged as it came) for uvicorn's own 400s, counted; True for anything else."""
        if record.getMessage() not in UVICORN_MESSAGES:
            return True
        self.metrics.requests.labels(endpoint="other", code="400", model="").inc()
        self.metrics.record_error("validation")
        self.unlogged += 1
        now = self.clock()
        if self.logged_at is None or now - self.logged_at >= LOG_EVERY_S:
            log.warning("rejected %d malformed HTTP request(s) with 400 (uvicorn: %s)", self.unlogged,
                        record.getMessage())
            self.unlogged, self.logged_at = 0, now
        return False


def count_malformed_requests(metrics: ServerMetrics) -> MalformedRequests:
    """Install the filter on uvicorn's logger (once the server runs: vLLM configures uvicorn's logging first)."""
    malformed = MalformedRequests(metrics)
    logging.getLogger(UVICORN_LOGGER).addFilter(malformed)
    return malformed
