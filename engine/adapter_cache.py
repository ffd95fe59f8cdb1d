"""Which LoRA adapters vLLM holds loaded: the engine's model of vLLM's adapter cache.

vLLM's worker keeps up to `max_cpu_loras` adapters loaded (by default `--max-loras`) in an LRU
cache, and loads an adapter from disk for a request whose adapter is not there, evicting the
one used least recently. That cache lives in vLLM's engine-core process, out of the API
server's sight, so the server keeps the same LRU over the requests it sends: a request whose
adapter is not among the `capacity` most recently used ones waits for a load (a cold start).
It follows vLLM's order of arrival, not its scheduling order, so under a burst that mixes more
adapters than fit it can be off by the few requests vLLM reorders.
"""

from __future__ import annotations

from collections import OrderedDict


class AdapterResidency:
    def __init__(self, capacity: int, loaded: tuple[str, ...] = ()):
        self.capacity = capacity
        self._recent: OrderedDict[str, None] = OrderedDict()
        for name in loaded:
            self.use(name)

    def use(self, name: str) -> bool:
        """Mark `name` used now; True when it was not loaded (the request waits for it to load)."""
        cold = name not in self._recent
        self._recent[name] = None
        self._recent.move_to_end(name)
        while len(self._recent) > self.capacity:
            self._recent.popitem(last=False)
        return cold

    @property
    def loaded(self) -> tuple[str, ...]:
        """Least recently used first."""
        return tuple(self._recent)
