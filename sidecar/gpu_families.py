"""GPU readings as Prometheus families: the sidecar's own names, and optionally dcgm-exporter's.

Pure code. Every GPU series carries the device (`gpu`, `uuid`, `model_name`)
and, where known, the pod, namespace and container it serves: the sidecar runs
in the pod, so it knows them without the kubelet's pod-resources socket that a
node-wide exporter needs.

`dcgm_compat` adds dcgm-exporter's names, units and labels (DCGM_FI_DEV_GPU_UTIL
in %, DCGM_FI_DEV_FB_USED in MiB, labels gpu, UUID, device, modelName,
Hostname, ...), so existing GPU dashboards and alerts keep working. They are all
gauges here: dcgm-exporter's ECC "counters" are named *_TOTAL, which the Prometheus
text format cannot carry as counters without appending `_total`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .nvml_reader import CLOCK_EVENT_REASONS, GpuIdentity, GpuReading

MIB = 1024 * 1024
GPU_LABELS = ("gpu", "uuid", "model_name")
DCGM_LABELS = ("gpu", "UUID", "device", "modelName", "Hostname")
PROCESS_OWNERS = {"engine": "the engine's compute processes", "other": "compute processes not the engine's"}


@dataclass(frozen=True)
class PodLabels:
    """Where this pod runs; empty values are left out of the label sets."""

    pod: str = ""
    namespace: str = ""
    container: str = ""

    def items(self) -> list[tuple[str, str]]:
        return [(name, value) for name, value in (("pod", self.pod), ("namespace", self.namespace),
                                                 ("container", self.container)) if value]


# (family suffix, help, GpuReading field)
GAUGES = (
    ("utilization_ratio", "Share of time a kernel ran on the GPU over NVML's last sample period, 0-1.",
     "utilization_ratio"),
    ("memory_utilization_ratio", "Share of time device memory was read or written, 0-1.",
     "memory_utilization_ratio"),
    ("memory_used_bytes", "Device memory in use.", "memory_used_bytes"),
    ("memory_free_bytes", "Device memory free.", "memory_free_bytes"),
    ("memory_total_bytes", "Device memory in all.", "memory_total_bytes"),
    ("temperature_celsius", "GPU core temperature.", "temperature_celsius"),
    ("power_watts", "Power draw.", "power_watts"),
    ("power_limit_watts", "Enforced power limit.", "power_limit_watts"),
    ("sm_clock_hertz", "SM clock.", "sm_clock_hertz"),
    ("memory_clock_hertz", "Memory clock.", "memory_clock_hertz"),
)

# (name, help, unit scale from our field, GpuReading field)
DCGM_GAUGES = (
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", 100, "utilization_ratio"),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %).", 100, "memory_utilization_ratio"),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", 1 / MIB, "memory_used_bytes"),
    ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", 1 / MIB, "memory_free_bytes"),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", 1, "temperature_celsius"),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", 1, "power_watts"),
    ("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz).", 1e-6, "sm_clock_hertz"),
    ("DCGM_FI_DEV_MEM_CLOCK", "Memory clock frequency (in MHz).", 1e-6, "memory_clock_hertz"),
    ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "Total number of single-bit volatile ECC errors.", 1,
     "ecc_corrected_errors"),
    ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "Total number of double-bit volatile ECC errors.", 1,
     "ecc_uncorrected_errors"),
    ("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "Current clock throttle reasons (bitmask).", 1,
     "clock_event_reasons"),
)


def gpu_families(readings: list[GpuReading], xid_counts: dict[tuple[int, int], int], pod: PodLabels,
                 last_xid: dict[int, int], dcgm_compat: bool = False, hostname: str = "") -> list[Metric]:
    """All GPU families for one collection. xid_counts: (gpu index, xid) -> events since the sidecar started."""
    extra = pod.items()
    names = [*GPU_LABELS, *(name for name, _ in extra)]
    extra_values = [value for _, value in extra]

    def labels_of(identity: GpuIdentity) -> list[str]:
        return [str(identity.index), identity.uuid, identity.model_name, *extra_values]

    families: list[Metric] = [GaugeMetricFamily("sidecar_gpus", "The pod's GPUs the sidecar reports (gpu_scope).",
                                                value=len(readings))]

    def per_gpu(family: Metric, value_of: Callable[[GpuReading], float | None], *more: str) -> None:
        for reading in readings:
            value = value_of(reading)
            if value is not None:
                family.add_metric([*labels_of(reading.identity), *more], value)

    for suffix, documentation, attribute in GAUGES:
        family = GaugeMetricFamily("sidecar_gpu_" + suffix, documentation, labels=names)
        per_gpu(family, lambda r, attribute=attribute: getattr(r, attribute))
        families.append(family)

    throttle = GaugeMetricFamily("sidecar_gpu_clock_throttle_reason_active",
                                 "1 while NVML reports this clocks event (throttle) reason.",
                                 labels=[*names, "reason"])
    for reason, bit in CLOCK_EVENT_REASONS.items():
        per_gpu(throttle, lambda r, bit=bit: None if r.clock_event_reasons is None
                else float(bool(r.clock_event_reasons & bit)), reason)
    families.append(throttle)

    ecc = CounterMetricFamily("sidecar_gpu_ecc_errors", "ECC errors since the driver loaded (volatile), by type.",
                              labels=[*names, "type"])
    per_gpu(ecc, lambda r: r.ecc_corrected_errors, "corrected")
    per_gpu(ecc, lambda r: r.ecc_uncorrected_errors, "uncorrected")
    families.append(ecc)

    by_index = {reading.identity.index: reading.identity for reading in readings}
    xids = CounterMetricFamily("sidecar_gpu_xid_errors", "XID critical error events seen, by XID code.",
                               labels=[*names, "xid"])
    for (index, xid), count in sorted(xid_counts.items()):
        if index in by_index:
            xids.add_metric([*labels_of(by_index[index]), str(xid)], count)
    families.append(xids)

    for owner, whose in PROCESS_OWNERS.items():
        memory = GaugeMetricFamily(f"sidecar_gpu_{owner}_process_memory_bytes",
                                   f"Device memory held by {whose}.", labels=names)
        per_gpu(memory, lambda r, owner=owner: getattr(r, f"{owner}_memory_bytes"))
        processes = GaugeMetricFamily(f"sidecar_gpu_{owner}_processes", f"Number of {whose} on the GPU.",
                                      labels=names)
        per_gpu(processes, lambda r, owner=owner: getattr(r, f"{owner}_processes"))
        families += [memory, processes]

    if dcgm_compat:
        families += dcgm_families(readings, pod, last_xid, hostname)
    return families


def dcgm_families(readings: list[GpuReading], pod: PodLabels, last_xid: dict[int, int],
                  hostname: str) -> list[Metric]:
    """dcgm-exporter's names, units and labels for the same readings."""
    extra = pod.items()
    names = [*DCGM_LABELS, *(name for name, _ in extra)]

    def labels_of(identity: GpuIdentity) -> list[str]:
        device = f"nvidia{identity.minor_number if identity.minor_number is not None else identity.index}"
        return [str(identity.index), identity.uuid, device, identity.model_name, hostname,
                *(value for _, value in extra)]

    families: list[Metric] = []
    for name, documentation, scale, attribute in DCGM_GAUGES:
        family = GaugeMetricFamily(name, documentation, labels=names)
        for reading in readings:
            value = getattr(reading, attribute)
            if value is not None:
                family.add_metric(labels_of(reading.identity), value * scale)
        families.append(family)
    # dcgm-exporter's XID gauge holds the last XID code seen (0: none).
    xid = GaugeMetricFamily("DCGM_FI_DEV_XID_ERRORS", "Value of the last XID error encountered.", labels=names)
    for reading in readings:
        xid.add_metric(labels_of(reading.identity), last_xid.get(reading.identity.index, 0))
    families.append(xid)
    return families
