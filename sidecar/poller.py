"""What the process asks of a poller (an asyncio task that reads one source on its own interval), and how
a poller says it failed. Not prometheus_client's Collector: what serves the families at scrape time."""

from __future__ import annotations

from typing import Protocol

from prometheus_client.core import Metric


class PollError(Exception):
    """A failed poll; `reason` is a bounded label value for sidecar_collector_errors_total."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class Poller(Protocol):
    name: str  # the `collector` label of the sidecar_collector_* series (their names are the wire contract)
    interval_s: float
    timeout_s: float
    backoff_max_s: float  # after failures, wait up to this long between tries (interval_s: no backoff)
    error_reasons: tuple[str, ...]

    async def poll(self) -> list[Metric]: ...

    async def close(self) -> None: ...
