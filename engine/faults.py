"""Fault injection, for tests and demos only.

Off unless the engine is started with --enable-fault-injection; then
POST /admin/fault-injection sets a share of generation requests to fail with
an engine error, and a delay added before each. Failures are spread evenly
(every 1/ratio-th request), not drawn at random, so a test or a demo that
sends N requests knows exactly how many fail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .protocol import ApiError, invalid


class InjectedFault(Exception):
    """Raised where a real engine failure would be, and handled the same way."""


@dataclass
class FaultInjector:
    error_ratio: float = 0.0
    delay_s: float = 0.0
    _seen: int = 0

    def configure(self, body: dict[str, Any]) -> None:
        unknown = set(body) - {"error_ratio", "delay_s"}
        if unknown:
            raise invalid(sorted(unknown)[0], "unknown field; expected error_ratio and/or delay_s")
        ratio = body.get("error_ratio", self.error_ratio)
        delay = body.get("delay_s", self.delay_s)
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
            raise invalid("error_ratio", f"expected a number in [0, 1], got {ratio!r}")
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0.0 <= delay <= 3600:
            raise invalid("delay_s", f"expected a number of seconds in [0, 3600], got {delay!r}")
        if ratio != self.error_ratio:
            self._seen = 0
        self.error_ratio, self.delay_s = float(ratio), float(delay)

    def should_fail(self) -> bool:
        """True for exactly round(ratio * n) of the first n requests since the ratio was set."""
        before = math.floor(self._seen * self.error_ratio + 1e-9)
        self._seen += 1
        return math.floor(self._seen * self.error_ratio + 1e-9) > before

    def state(self) -> dict[str, float]:
        return {"error_ratio": self.error_ratio, "delay_s": self.delay_s}


def disabled_error() -> ApiError:
    return ApiError(404, "fault injection is disabled; start the engine with --enable-fault-injection",
                    code="not_found", error_type="not_found_error")
