"""Fault injection, for tests and demos only.

Off unless the engine is started with an admin listener (--admin-port, see
admin.py); then POST /admin/fault-injection there sets a share of generation requests to fail with
an engine error (error_ratio), a delay before each (delay_s), and a delay per
generated token as the client sees it (token_delay_s: a slow stream whatever the
machine's speed; vLLM's own histograms do not see it). Failures are spread evenly
(every 1/ratio-th request), not drawn at random, so a test or a demo that
sends N requests knows exactly how many fail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .protocol import invalid


class InjectedFault(Exception):
    """Raised where a real engine failure would be, and handled the same way."""


@dataclass
class FaultInjector:
    error_ratio: float = 0.0
    delay_s: float = 0.0
    token_delay_s: float = 0.0
    _seen: int = 0

    def configure(self, body: dict[str, Any]) -> None:
        fields = {"error_ratio": 1.0, "delay_s": 3600.0, "token_delay_s": 10.0}  # field: upper bound
        unknown = set(body) - set(fields)
        if unknown:
            raise invalid(sorted(unknown)[0], f"unknown field; expected some of {', '.join(fields)}")
        values = {}
        for name, upper in fields.items():
            value = body.get(name, getattr(self, name))
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= upper:
                raise invalid(name, f"expected a number in [0, {upper:g}], got {value!r}")
            values[name] = float(value)
        if values["error_ratio"] != self.error_ratio:
            self._seen = 0
        self.error_ratio, self.delay_s, self.token_delay_s = (values[n] for n in fields)

    def should_fail(self) -> bool:
        """True for exactly round(ratio * n) of the first n requests since the ratio was set."""
        before = math.floor(self._seen * self.error_ratio + 1e-9)
        self._seen += 1
        return math.floor(self._seen * self.error_ratio + 1e-9) > before

    def state(self) -> dict[str, float]:
        return {"error_ratio": self.error_ratio, "delay_s": self.delay_s, "token_delay_s": self.token_delay_s}

