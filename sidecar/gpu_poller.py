"""The GPU poller: NVML read in a worker thread, never on the event loop.

No NVML library, no driver or no GPU is an expected state (a CPU node, a
misconfigured pod), not a crash: the poller reports down with one log line
and retries with exponential backoff. A GPU lost mid-run (XID 79, a reset) is
reported, NVML is shut down and opened afresh on the next try.
"""

from __future__ import annotations

import asyncio
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from types import ModuleType
from typing import Any, Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from slo_sidecar.spec.model import DATA_CORRUPTING_XIDS, GPU_CORRUPTING_XIDS, GPU_UTILIZATION

from .poller import PollError
from .gpu_families import PodLabels, gpu_families
from .nvml_reader import ALL_ERROR_REASONS, HINTS, GpuReading, NvmlReader, NvmlReadError
from .slo_tracker import Sample, SloTracker


def pod_readings(readings: list[GpuReading], engine_gpus: frozenset[str]) -> list[GpuReading]:
    """The pod's own GPUs among those NVML sees (a sidecar may see every GPU of its node).

    Those the engine says it can use (`slo_engine_accelerator_info`: its container sees only the
    GPUs the device plugin gave it); where it says none (not scraped yet, or a CPU engine), those
    its processes hold memory on. Neither: none, rather than another pod's GPUs.
    """
    if engine_gpus:
        return [r for r in readings if r.identity.uuid in engine_gpus]
    return [r for r in readings if r.engine_processes]


def _utilization_family(readings: list[GpuReading], identity: dict[str, str]) -> list[Metric]:
    """The mean utilisation of the GPUs the sidecar reports (the pod's own; with --gpu-scope all, the node's)
    with the service's identity labels (GPU_UTILIZATION); none while no GPU reports one."""
    values = [r.utilization_ratio for r in readings if r.utilization_ratio is not None]
    if not values:
        return []
    family = GaugeMetricFamily(GPU_UTILIZATION, "Mean utilisation of the pod's own GPUs (the node's with "
                               "--gpu-scope all), 0-1, with the service's identity labels: what a time-slice SLO on "
                               "GPU utilisation reads.", labels=[*identity])
    family.add_metric([*identity.values()], sum(values) / len(values))
    return [family]


class GpuPoller:
    name = "gpu"
    error_reasons = ALL_ERROR_REASONS

    def __init__(self, nvml: ModuleType | Any, *, interval_s: float, timeout_s: float, backoff_max_s: float,
                 pod: PodLabels, engine_pids: Callable[[], set[int]] = set, dcgm_compat: bool = False,
                 hostname: str | None = None, scope: str = "pod",
                 engine_gpus: Callable[[], frozenset[str]] = frozenset, tracker: SloTracker | None = None):
        self.interval_s, self.timeout_s, self.backoff_max_s = interval_s, timeout_s, backoff_max_s
        self.reader = NvmlReader(nvml, engine_pids)
        self.scope = scope
        self.engine_gpus = engine_gpus
        self.pod = pod
        self.dcgm_compat = dcgm_compat
        self.hostname = hostname or socket.gethostname()
        self.gpu_count: int | None = None  # from the last good read
        self.xid_counts: dict[tuple[int, int], int] = {}  # (gpu index, xid) -> events, for the sidecar's life
        self.last_xid: dict[int, int] = {}
        # Data-corrupting XIDs on the pod's own GPUs, whatever the scope: the correctness SLI's GPU term, which
        # the tracker takes as it takes the engine's counters.
        self.tracker = tracker
        self.corrupting_xids = dict.fromkeys(DATA_CORRUPTING_XIDS, 0)
        self._open = False
        # One thread: a wedged driver call blocks it, and later tries fail fast instead of piling up threads.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nvml")
        self._running: Future | None = None

    async def poll(self) -> list[Metric]:
        if self._running is not None and not self._running.done():
            raise PollError("timeout", "the previous NVML call has not returned")
        self._running = self._thread.submit(self._read)
        try:
            readings, xids = await asyncio.wrap_future(self._running)
        except NvmlReadError as error:
            raise PollError(error.reason, _explain(error)) from None
        own = pod_readings(readings, self.engine_gpus())
        ours = {reading.identity.index for reading in own}
        if self.scope == "pod":
            readings = own
            xids = [(index, xid) for index, xid in xids if index in ours]
        for index, xid in xids:
            self.xid_counts[(index, xid)] = self.xid_counts.get((index, xid), 0) + 1
            self.last_xid[index] = xid
            if index in ours and xid in self.corrupting_xids:
                self.corrupting_xids[xid] += 1
        self.gpu_count = len(readings)
        families = gpu_families(readings, self.xid_counts, self.pod, self.last_xid, self.dcgm_compat, self.hostname)
        identity = self.tracker.service_identity() if self.tracker is not None else {}
        if identity is None:  # the engine has not been seen: no identity to name the correctness term by yet
            return families
        if self.tracker is not None and GPU_CORRUPTING_XIDS in self.tracker.metrics:  # the live correctness SLI
            self.tracker.observe(self._corrupting_samples(identity), time.time())
        return [*families, self._corrupting_family(identity), *_utilization_family(readings, identity)]

    def _corrupting_samples(self, identity: dict[str, str]) -> list[Sample]:
        return [Sample(GPU_CORRUPTING_XIDS, (("xid", str(xid)), *identity.items()), float(count))
                for xid, count in self.corrupting_xids.items()]

    def _corrupting_family(self, identity: dict[str, str]) -> Metric:
        """The data-corrupting XID counter, by XID, each at 0 from the start, with the service's identity labels
        as the SLI selects them."""
        family = CounterMetricFamily(GPU_CORRUPTING_XIDS.removesuffix("_total"),
                                     "XID events on the pod's own GPUs of the kinds NVIDIA's XID catalogue says "
                                     "corrupt data (48, 64, 94, 95): bad events of the correctness SLI.",
                                     labels=["xid", *identity])
        for xid, count in self.corrupting_xids.items():
            family.add_metric([str(xid), *identity.values()], count)
        return family

    def _read(self) -> tuple[list[GpuReading], list[tuple[int, int]]]:
        """In the worker thread."""
        if not self._open:
            self.reader.open()
            self._open = True
        try:
            return self.reader.read()
        except NvmlReadError as error:
            if error.reason == "gpu_lost":
                self.reader.close()
                self._open = False
            raise

    async def close(self) -> None:
        if self._open and (self._running is None or self._running.done()):
            await asyncio.wrap_future(self._thread.submit(self.reader.close))
        self._thread.shutdown(wait=False, cancel_futures=True)


def _explain(error: NvmlReadError) -> str:
    hint = HINTS.get(error.reason)
    return f"{hint} (NVML: {error.detail})" if hint else error.detail
