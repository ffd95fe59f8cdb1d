"""The GPUs the engine can use, from NVML (not torch: a CUDA call here would open a second CUDA context in the
API process, costing hundreds of MiB of GPU memory)."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


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
