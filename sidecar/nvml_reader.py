"""Reads every GPU through NVML (`pynvml`, from nvidia-ml-py): blocking calls, run in a thread.

The NVML module is passed in, so tests and GPU-less demos can hand over
`fake_nvml.FakeNvml` instead; nothing else in the sidecar touches NVML. Values
leave here in base units (ratios 0-1, bytes, watts, hertz). A metric a device
does not support (NVMLError_NotSupported, common on consumer and older GPUs) is
left out for that device and not asked again; any other NVML error fails the
read with a bounded reason, and "gpu_lost" tells the caller to start over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

import pynvml

from .poller import PollError

# The clocks event ("throttle") reasons, by the bit NVML sets: one series each.
CLOCK_EVENT_REASONS = {
    "gpu_idle": pynvml.nvmlClocksEventReasonGpuIdle,
    "applications_clocks_setting": pynvml.nvmlClocksEventReasonApplicationsClocksSetting,
    "sw_power_cap": pynvml.nvmlClocksEventReasonSwPowerCap,
    "hw_slowdown": pynvml.nvmlClocksEventReasonHwSlowdown,
    "sync_boost": pynvml.nvmlClocksEventReasonSyncBoost,
    "sw_thermal_slowdown": pynvml.nvmlClocksEventReasonSwThermalSlowdown,
    "hw_thermal_slowdown": pynvml.nvmlClocksEventReasonHwThermalSlowdown,
    "hw_power_brake_slowdown": pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown,
    "display_clock_setting": pynvml.nvmlClocksEventReasonDisplayClockSetting,
}

# NVML error -> the bounded reason the sidecar counts it under.
ERROR_REASONS = {
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: "no_library",
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED: "no_driver",
    pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH: "no_driver",
    pynvml.NVML_ERROR_NO_PERMISSION: "no_permission",
    pynvml.NVML_ERROR_GPU_IS_LOST: "gpu_lost",
    pynvml.NVML_ERROR_RESET_REQUIRED: "gpu_lost",
    pynvml.NVML_ERROR_GPU_NOT_FOUND: "gpu_lost",
    pynvml.NVML_ERROR_UNINITIALIZED: "gpu_lost",
    pynvml.NVML_ERROR_UNKNOWN: "gpu_lost",
}
ALL_ERROR_REASONS = ("no_library", "no_driver", "no_permission", "no_gpu", "gpu_lost", "nvml_error")
HINTS = {
    "no_library": "no NVIDIA driver library (libnvidia-ml.so) here; GPU metrics are off",
    "no_driver": "the NVIDIA driver is not loaded or does not match; GPU metrics are off",
    "no_gpu": "NVML sees no GPU; GPU metrics are off",
}


class NvmlReadError(PollError):
    """NVML failed; the reason is one of ALL_ERROR_REASONS."""


def reason_of(error: Exception) -> str:
    return ERROR_REASONS.get(getattr(error, "value", None), "nvml_error")


@dataclass(frozen=True)
class GpuIdentity:
    index: int
    uuid: str
    model_name: str
    minor_number: int | None  # /dev/nvidiaN; None where NVML does not say


@dataclass(frozen=True)
class GpuReading:
    """One device at one moment; None where the device does not support the metric."""

    identity: GpuIdentity
    utilization_ratio: float | None = None
    memory_utilization_ratio: float | None = None
    memory_used_bytes: float | None = None
    memory_free_bytes: float | None = None
    memory_total_bytes: float | None = None
    temperature_celsius: float | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    sm_clock_hertz: float | None = None
    memory_clock_hertz: float | None = None
    clock_event_reasons: int | None = None  # bitmask, see CLOCK_EVENT_REASONS
    ecc_corrected_errors: float | None = None  # volatile: since the driver loaded
    ecc_uncorrected_errors: float | None = None
    engine_memory_bytes: float | None = None  # held by the engine's processes
    other_memory_bytes: float | None = None  # held by anyone else's compute processes
    engine_processes: int | None = None
    other_processes: int | None = None


@dataclass
class NvmlReader:
    """An open NVML session: handles, identities and the XID event set, kept between reads."""

    nvml: ModuleType | Any
    engine_pids: Callable[[], set[int]] = set
    identities: list[GpuIdentity] = field(default_factory=list)
    _handles: list[Any] = field(default_factory=list)
    _events: Any = None
    _unsupported: set[tuple[int, str]] = field(default_factory=set)
    _is_engine: dict[int, bool] = field(default_factory=dict)  # pid -> the engine's? (scanning /proc is not free)

    def open(self) -> None:
        nvml = self.nvml
        try:
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
            if count == 0:
                raise NvmlReadError("no_gpu", "NVML sees no GPU")
            self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self.identities = [self._identity(i, handle) for i, handle in enumerate(self._handles)]
        except nvml.NVMLError as error:
            self.close()
            raise NvmlReadError(reason_of(error), str(error)) from None
        self._watch_xid_events()

    def _identity(self, index: int, handle: Any) -> GpuIdentity:
        minor = self._optional(index, "minor", lambda: self.nvml.nvmlDeviceGetMinorNumber(handle))
        return GpuIdentity(index, _text(self.nvml.nvmlDeviceGetUUID(handle)),
                           _text(self.nvml.nvmlDeviceGetName(handle)), minor)

    def _watch_xid_events(self) -> None:
        """XID (critical error) events arrive through an event set; devices that cannot report them are skipped."""
        nvml = self.nvml
        try:
            self._events = nvml.nvmlEventSetCreate()
        except nvml.NVMLError:
            self._events = None
            return
        for handle in self._handles:
            try:
                nvml.nvmlDeviceRegisterEvents(handle, nvml.nvmlEventTypeXidCriticalError, self._events)
            except nvml.NVMLError:
                pass

    def close(self) -> None:
        nvml = self.nvml
        for release in ((lambda: nvml.nvmlEventSetFree(self._events)) if self._events is not None else None,
                        nvml.nvmlShutdown):
            if release is None:
                continue
            try:
                release()
            except (nvml.NVMLError, OSError):
                pass
        self._events, self._handles = None, []
        self._unsupported.clear()  # a re-opened session may find other devices

    def read(self) -> tuple[list[GpuReading], list[tuple[int, int]]]:
        """(a reading per GPU, the XID events since the last read as (gpu index, xid))."""
        nvml = self.nvml
        try:
            xids = self._drain_xid_events()
            processes = [self._optional(index, "processes", lambda: nvml.nvmlDeviceGetComputeRunningProcesses(handle))
                         for index, handle in enumerate(self._handles)]
            engine = self._engine_pids({p.pid for per_gpu in processes if per_gpu for p in per_gpu})
            return [self._read_device(index, handle, processes[index], engine)
                    for index, handle in enumerate(self._handles)], xids
        except nvml.NVMLError as error:
            raise NvmlReadError(reason_of(error), str(error)) from None

    def _read_device(self, index: int, handle: Any, processes: list[Any] | None, pids: set[int]) -> GpuReading:
        nvml = self.nvml
        optional = self._optional
        utilization = optional(index, "utilization", lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
        memory = optional(index, "memory", lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        milliwatts = optional(index, "power", lambda: nvml.nvmlDeviceGetPowerUsage(handle))
        limit_milliwatts = optional(index, "power_limit", lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle))
        sm_mhz = optional(index, "sm_clock", lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM))
        memory_mhz = optional(index, "memory_clock", lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM))
        ecc = [optional(index, f"ecc_{kind}", lambda kind=kind: nvml.nvmlDeviceGetTotalEccErrors(
                   handle, kind, nvml.NVML_VOLATILE_ECC))
               for kind in (nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)]
        reading = dict(
            utilization_ratio=_scaled(utilization and utilization.gpu, 0.01),
            memory_utilization_ratio=_scaled(utilization and utilization.memory, 0.01),
            memory_used_bytes=_scaled(memory and memory.used, 1),
            memory_free_bytes=_scaled(memory and memory.free, 1),
            memory_total_bytes=_scaled(memory and memory.total, 1),
            temperature_celsius=_scaled(optional(index, "temperature", lambda: nvml.nvmlDeviceGetTemperature(
                handle, nvml.NVML_TEMPERATURE_GPU)), 1),
            power_watts=_scaled(milliwatts, 0.001),
            power_limit_watts=_scaled(limit_milliwatts, 0.001),
            sm_clock_hertz=_scaled(sm_mhz, 1e6),
            memory_clock_hertz=_scaled(memory_mhz, 1e6),
            clock_event_reasons=optional(index, "clock_events", lambda: nvml.nvmlDeviceGetCurrentClocksEventReasons(
                handle)),
            ecc_corrected_errors=_scaled(ecc[0], 1),
            ecc_uncorrected_errors=_scaled(ecc[1], 1),
        )
        if processes is not None:
            engine = [p for p in processes if p.pid in pids]
            other = [p for p in processes if p.pid not in pids]
            reading.update(
                engine_processes=len(engine), other_processes=len(other),
                # usedGpuMemory is None where the driver cannot say (e.g. some MIG and vGPU set-ups).
                engine_memory_bytes=float(sum(p.usedGpuMemory or 0 for p in engine)),
                other_memory_bytes=float(sum(p.usedGpuMemory or 0 for p in other)))
        return GpuReading(self.identities[index], **reading)

    def _engine_pids(self, pids: set[int]) -> set[int]:
        """Which of these GPU processes are the engine's; /proc is read only when a new PID shows up."""
        if not pids <= self._is_engine.keys():
            engine = self.engine_pids()
            self._is_engine = {pid: pid in engine for pid in pids}
        return {pid for pid in pids if self._is_engine[pid]}

    def _optional(self, index: int, what: str, call: Callable[[], Any]) -> Any:
        """call(), or None if the device does not support it (then never asked again)."""
        if (index, what) in self._unsupported:
            return None
        try:
            return call()
        except self.nvml.NVMLError as error:
            if getattr(error, "value", None) not in (self.nvml.NVML_ERROR_NOT_SUPPORTED,
                                                     self.nvml.NVML_ERROR_FUNCTION_NOT_FOUND):
                raise
            self._unsupported.add((index, what))
            return None

    def _drain_xid_events(self) -> list[tuple[int, int]]:
        """Every XID event waiting in the set, without blocking."""
        if self._events is None:
            return []
        nvml = self.nvml
        events = []
        while True:
            try:
                data = nvml.nvmlEventSetWait_v2(self._events, 0)
            except nvml.NVMLError as error:
                if getattr(error, "value", None) == nvml.NVML_ERROR_TIMEOUT:
                    return events  # nothing more waiting
                raise
            if data.eventType & nvml.nvmlEventTypeXidCriticalError:
                events.append((int(nvml.nvmlDeviceGetIndex(data.device)), int(data.eventData)))


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else float(value) * factor


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
