"""Liveness and readiness: what /health and /ready say, and why.

`evaluate_health` is pure. The accelerator-memory reading comes from NVML, not
torch: a CUDA call here would open a second CUDA context in the API process,
costing hundreds of MiB of the very GPU memory it is measuring.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Literal

log = logging.getLogger(__name__)

Phase = Literal["loading", "ready", "draining", "failed"]
MEMORY_DEGRADED_RATIO = 0.95


@dataclass(frozen=True)
class HealthReport:
    status: Literal["healthy", "degraded", "unhealthy"]
    reason: str
    http_status: int
    accelerator_memory_used_ratio: float | None

    def body(self) -> dict[str, object]:
        return {
            "status": self.status,
            "reason": self.reason,
            "accelerator_memory_used_ratio": self.accelerator_memory_used_ratio,
        }


def evaluate_health(phase: Phase, engine_dead: bool, memory_used_ratio: float | None,
                    degraded_above: float = MEMORY_DEGRADED_RATIO) -> HealthReport:
    """Liveness: unhealthy (503) only when restarting the process would help."""
    if phase == "failed" or engine_dead:
        return HealthReport("unhealthy", "the vLLM engine is not running", 503, memory_used_ratio)
    if phase == "loading":
        return HealthReport("unhealthy", "model is loading", 503, memory_used_ratio)
    if memory_used_ratio is not None and memory_used_ratio > degraded_above:
        return HealthReport(
            "degraded",
            f"accelerator memory {memory_used_ratio:.1%} used, above {degraded_above:.0%}",
            200, memory_used_ratio,
        )
    reason = "draining for shutdown" if phase == "draining" else "ok"
    return HealthReport("healthy", reason, 200, memory_used_ratio)


def visible_gpu_uuids(nvml: object | None = None) -> list[str]:
    """The UUIDs of the GPUs this process can use, from NVML; [] without NVML, driver or GPU.

    In a Kubernetes pod the NVIDIA container runtime exposes to the engine container only the GPUs
    the device plugin gave it, so this is the pod's allocation: the sidecar, which may see every
    GPU of the node, reports only these.
    """
    try:
        if nvml is None:
            import pynvml as nvml
        nvml.nvmlInit()  # type: ignore[attr-defined]
        try:
            uuids = [nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))  # type: ignore[attr-defined]
                     for i in range(nvml.nvmlDeviceGetCount())]  # type: ignore[attr-defined]
        finally:
            nvml.nvmlShutdown()  # type: ignore[attr-defined]
    except Exception as exc:  # no library, no driver, no GPU: all mean "no accelerator"
        log.info("no GPU visible to the engine (NVML: %s)", exc)
        return []
    return [uuid.decode() if isinstance(uuid, bytes) else str(uuid) for uuid in uuids]


class AcceleratorMemoryProbe:
    """The highest memory-used ratio over the visible GPUs; None without NVML or GPUs.

    Cached for a few seconds: probes and scrapes may come often, NVML calls are not free.
    """

    def __init__(self, max_age_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.max_age_s = max_age_s
        self.clock = clock
        self._value: float | None = None
        self._read_at: float | None = None
        self._nvml_ok: bool | None = None

    def read(self) -> float | None:
        now = self.clock()
        if self._read_at is None or now - self._read_at >= self.max_age_s:
            self._value = self._read_nvml()
            self._read_at = now
        return self._value

    def _read_nvml(self) -> float | None:
        if self._nvml_ok is False:
            return None
        try:
            import pynvml

            if not self._nvml_ok:
                pynvml.nvmlInit()
            ratios = []
            for index in range(pynvml.nvmlDeviceGetCount()):
                info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index))
                if info.total:
                    ratios.append(info.used / info.total)
            self._nvml_ok = True
            return max(ratios) if ratios else None
        except Exception as exc:  # no library, no driver, no GPU: all mean "no accelerator"
            if self._nvml_ok is None:
                log.info("no accelerator memory reading (NVML unavailable: %s)", exc)
            self._nvml_ok = False
            return None
