"""Fault injection, for tests and demos only.

Off unless the engine is started with an admin listener (--admin-port, see
admin.py); then POST /admin/fault-injection there sets a share of generation requests to fail with
an engine error (error_ratio), a delay before each (delay_s), and a delay per
generated token as the client sees it (token_delay_s: a slow stream whatever the
machine's speed; vLLM's own histograms do not see it). Inside vLLM's own server
(engine/asgi.py) the token delay is per streamed chunk: tokens that wait behind a
slow client reach it together, in one chunk, as vLLM sends them. Failures are spread evenly
(every 1/ratio-th request), not drawn at random, so a test or a demo that
sends N requests knows exactly how many fail. With `model` (a served name), the faults
touch that tenant's requests alone, and its failures are spread over its requests only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


class FaultSettingError(ValueError):
    """A fault setting the admin listener refuses (400): the message names the field."""


def invalid(field: str, message: str) -> FaultSettingError:
    return FaultSettingError(f"{field}: {message}")


@dataclass
class FaultInjector:
    error_ratio: float = 0.0
    delay_s: float = 0.0
    token_delay_s: float = 0.0
    model: str | None = None  # the one tenant the faults touch; None: every request
    served: tuple[str, ...] = ()  # the names `model` may take
    _seen: int = 0

    def configure(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise FaultSettingError("the body must be a JSON object")
        fields = {"error_ratio": 1.0, "delay_s": 3600.0, "token_delay_s": 10.0}  # field: upper bound
        unknown = set(body) - {*fields, "model"}
        if unknown:
            raise invalid(sorted(unknown)[0], f"unknown field; expected some of {', '.join(fields)}, model")
        model = body.get("model", self.model)
        if model is not None and model not in self.served:
            raise invalid("model", f"expected null or one of the served names {', '.join(self.served)}, "
                                   f"got {model!r}")
        values = {}
        for name, upper in fields.items():
            value = body.get(name, getattr(self, name))
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= upper:
                raise invalid(name, f"expected a number in [0, {upper:g}], got {value!r}")
            values[name] = float(value)
        if values["error_ratio"] != self.error_ratio or model != self.model:
            self._seen = 0
        self.error_ratio, self.delay_s, self.token_delay_s = (values[n] for n in fields)
        self.model = model

    def applies_to(self, model: str) -> bool:
        return self.model is None or model == self.model

    def should_fail(self) -> bool:
        """True for exactly round(ratio * n) of the first n requests since the ratio was set."""
        before = math.floor(self._seen * self.error_ratio + 1e-9)
        self._seen += 1
        return math.floor(self._seen * self.error_ratio + 1e-9) > before

    def state(self) -> dict[str, float | str | None]:
        return {"error_ratio": self.error_ratio, "delay_s": self.delay_s, "token_delay_s": self.token_delay_s,
                "model": self.model}

