"""What the process asks of a collector, and how a collector says it failed."""

from __future__ import annotations

from typing import Protocol

from prometheus_client.core import Metric


class CollectError(Exception):
    """A failed collection; `reason` is a bounded label value for sidecar_collector_errors_total."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class Collector(Protocol):
    name: str
    interval_s: float
    timeout_s: float
    backoff_max_s: float  # after failures, wait up to this long between tries (interval_s: no backoff)
    error_reasons: tuple[str, ...]

    async def collect(self) -> list[Metric]: ...

    async def close(self) -> None: ...
