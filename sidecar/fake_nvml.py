"""FAKE NVML: a stand-in for the `pynvml` module, for machines without an NVIDIA GPU.

This is a fake, and only for tests and GPU-less demos (`--fake-gpu`). It
replaces the functions that talk to the driver and nothing else: constants and
error classes are the real `pynvml` ones, and errors are raised as the real
library raises them (`pynvml.NVMLError(code)` gives `NVMLError_GpuIsLost` and
friends), so the reader is exercised exactly as on a GPU node.

Values replay snapshots taken from an H100 SXM serving vLLM (idle, busy, at
its power cap, thermally warm); each device moves to its next snapshot every
time its utilisation is read, i.e. once per collection.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable

import pynvml

MIB = 1024 * 1024

# (gpu %, memory %, used MiB, °C, mW, SM MHz, memory MHz, clocks event reasons)
H100_SNAPSHOTS = [
    (0, 0, 74_113, 33, 71_532, 345, 2_619, pynvml.nvmlClocksEventReasonGpuIdle),
    (87, 41, 74_113, 48, 412_704, 1_980, 2_619, 0),
    (99, 63, 74_121, 61, 688_190, 1_755, 2_619, pynvml.nvmlClocksEventReasonSwPowerCap),
    (97, 58, 74_121, 66, 650_118, 1_830, 2_619, 0),
]


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    minor_number: int = 0
    memory_total: int = 81_559 * MIB
    power_limit_mw: int = 700_000
    snapshots: list[tuple] = field(default_factory=lambda: list(H100_SNAPSHOTS))
    ecc_corrected: int = 0
    ecc_uncorrected: int = 0
    processes: Callable[[], list[tuple[int, int]]] = list  # (pid, bytes) of compute processes
    unsupported: set[str] = field(default_factory=set)  # NVML function names answering NotSupported
    pending_xids: list[int] = field(default_factory=list)  # XID events not yet delivered
    reads: int = 0

    @property
    def snapshot(self) -> tuple:
        return self.snapshots[max(0, self.reads - 1) % len(self.snapshots)]


def fail(code: int) -> pynvml.NVMLError:
    """The exception the real library raises for an NVML return code."""
    return pynvml.NVMLError(code)


class FakeNvml:
    """Module-shaped: the reader calls `fake.nvmlInit()` as it would `pynvml.nvmlInit()`."""

    def __init__(self, gpus: list[FakeGpu] | None = None, *, library_present: bool = True,
                 driver_loaded: bool = True):
        self.gpus = [FakeGpu("GPU-f4c2a6d0-3b9e-4f61-9d2c-8e1a7b5c3d01")] if gpus is None else gpus
        self.library_present = library_present
        self.driver_loaded = driver_loaded
        self.lost = False  # every device query answers GPU_IS_LOST, as after an XID 79
        self.hang_s = 0.0  # reading utilisation blocks this long, as on a wedged driver
        self.initialized = False
        self.init_calls = 0
        self.calls: Counter[str] = Counter()  # device queries by function name
        self.errors: dict[str, int] = {}  # device function name -> the NVML error code it answers with

    def __getattr__(self, name: str) -> Any:
        # Constants (NVML_CLOCK_SM, nvmlEventTypeXidCriticalError, ...) and error classes: the real ones.
        if name.startswith(("NVML_", "NVMLError", "nvmlClocks", "nvmlEventType")):
            return getattr(pynvml, name)
        raise AttributeError(f"FakeNvml has no {name}")

    # --- library -------------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if not self.library_present:
            raise fail(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
        if not self.driver_loaded:
            raise fail(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self._check_init()
        self.initialized = False

    def nvmlDeviceGetCount(self) -> int:
        self._check_init()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        self._check_init()
        if not 0 <= index < len(self.gpus):
            raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self.gpus[index]

    # --- devices -------------------------------------------------------------------------------

    def _device(self, gpu: FakeGpu, function: str) -> FakeGpu:
        self._check_init()
        self.calls[function] += 1
        if self.lost:
            raise fail(pynvml.NVML_ERROR_GPU_IS_LOST)
        if function in gpu.unsupported:
            raise fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if function in self.errors:
            raise fail(self.errors[function])
        return gpu

    def nvmlDeviceGetIndex(self, gpu: FakeGpu) -> int:
        return self.gpus.index(self._device(gpu, "nvmlDeviceGetIndex"))

    def nvmlDeviceGetUUID(self, gpu: FakeGpu) -> str:
        return self._device(gpu, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetName(self, gpu: FakeGpu) -> str:
        return self._device(gpu, "nvmlDeviceGetName").name

    def nvmlDeviceGetMinorNumber(self, gpu: FakeGpu) -> int:
        return self._device(gpu, "nvmlDeviceGetMinorNumber").minor_number

    def nvmlDeviceGetUtilizationRates(self, gpu: FakeGpu) -> SimpleNamespace:
        if self.hang_s:
            time.sleep(self.hang_s)
        self._device(gpu, "nvmlDeviceGetUtilizationRates").reads += 1
        return SimpleNamespace(gpu=gpu.snapshot[0], memory=gpu.snapshot[1])

    def nvmlDeviceGetMemoryInfo(self, gpu: FakeGpu) -> SimpleNamespace:
        used = self._device(gpu, "nvmlDeviceGetMemoryInfo").snapshot[2] * MIB
        return SimpleNamespace(total=gpu.memory_total, used=used, free=gpu.memory_total - used)

    def nvmlDeviceGetTemperature(self, gpu: FakeGpu, sensor: int) -> int:
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._device(gpu, "nvmlDeviceGetTemperature").snapshot[3]

    def nvmlDeviceGetPowerUsage(self, gpu: FakeGpu) -> int:
        return self._device(gpu, "nvmlDeviceGetPowerUsage").snapshot[4]

    def nvmlDeviceGetEnforcedPowerLimit(self, gpu: FakeGpu) -> int:
        return self._device(gpu, "nvmlDeviceGetEnforcedPowerLimit").power_limit_mw

    def nvmlDeviceGetClockInfo(self, gpu: FakeGpu, clock: int) -> int:
        snapshot = self._device(gpu, "nvmlDeviceGetClockInfo").snapshot
        if clock == pynvml.NVML_CLOCK_SM:
            return snapshot[5]
        if clock == pynvml.NVML_CLOCK_MEM:
            return snapshot[6]
        raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetCurrentClocksEventReasons(self, gpu: FakeGpu) -> int:
        return self._device(gpu, "nvmlDeviceGetCurrentClocksEventReasons").snapshot[7]

    def nvmlDeviceGetTotalEccErrors(self, gpu: FakeGpu, error_type: int, counter_type: int) -> int:
        self._device(gpu, "nvmlDeviceGetTotalEccErrors")
        if counter_type != pynvml.NVML_VOLATILE_ECC:
            raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.ecc_corrected if error_type == pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED else gpu.ecc_uncorrected

    def nvmlDeviceGetComputeRunningProcesses(self, gpu: FakeGpu) -> list[SimpleNamespace]:
        self._device(gpu, "nvmlDeviceGetComputeRunningProcesses")
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in gpu.processes()]

    # --- XID events ----------------------------------------------------------------------------

    def nvmlEventSetCreate(self) -> list[FakeGpu]:
        self._check_init()
        return []  # the devices registered with it

    def nvmlDeviceRegisterEvents(self, gpu: FakeGpu, event_types: int, event_set: list[FakeGpu]) -> None:
        self._device(gpu, "nvmlDeviceRegisterEvents")
        if event_types & pynvml.nvmlEventTypeXidCriticalError:
            event_set.append(gpu)

    def nvmlEventSetWait_v2(self, event_set: list[FakeGpu], timeout_ms: int) -> SimpleNamespace:
        self._check_init()
        for gpu in event_set:
            if gpu.pending_xids:
                return SimpleNamespace(device=gpu, eventType=pynvml.nvmlEventTypeXidCriticalError,
                                       eventData=gpu.pending_xids.pop(0))
        raise fail(pynvml.NVML_ERROR_TIMEOUT)

    def nvmlEventSetFree(self, event_set: list[FakeGpu]) -> None:
        self._check_init()
        event_set.clear()

    def _check_init(self) -> None:
        if not self.initialized:
            raise fail(pynvml.NVML_ERROR_UNINITIALIZED)


def engine_holds_memory(find_engine: Callable[[], set[int]], used: int = 70 * 1024**3
                        ) -> Callable[[], list[tuple[int, int]]]:
    """A process list in which the engine's first process holds `used` bytes, as vLLM's would.

    The engine is looked up again when the process found is gone (an engine restart),
    or every 30 s while none is found.
    """
    found: list[int] = []
    looked_at = [-math.inf]

    def processes() -> list[tuple[int, int]]:
        stale = not os.path.exists(f"/proc/{found[0]}") if found else time.monotonic() - looked_at[0] > 30
        if stale:
            found[:] = sorted(find_engine())[:1]
            looked_at[0] = time.monotonic()
        return [(pid, used) for pid in found]

    return processes


def fake_gpus(count: int, processes: Callable[[], list[tuple[int, int]]] = list) -> FakeNvml:
    """`count` fake H100s, for `--fake-gpu N`."""
    return FakeNvml([FakeGpu(f"GPU-f4c2a6d0-3b9e-4f61-9d2c-8e1a7b5c3d{index:02d}", minor_number=index,
                             processes=processes) for index in range(count)])
