"""The GPU collector against the FAKE NVML (sidecar/fake_nvml.py), and the real no-GPU path of this machine.

The fake stands in for the driver only: the reader and collector under test are
the ones the sidecar runs, and the errors are the real pynvml exception classes.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pynvml
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from slo_sidecar.sidecar.app import retry_delay
from slo_sidecar.sidecar.poller import PollError
from slo_sidecar.sidecar.cost import cost_figures
from slo_sidecar.sidecar.fake_nvml import H100_SNAPSHOTS, MIB, FakeGpu, FakeNvml, fake_gpus
from slo_sidecar.sidecar.gpu_poller import GpuPoller
from slo_sidecar.sidecar.gpu_families import PodLabels
from slo_sidecar.sidecar.nvml_reader import CLOCK_EVENT_REASONS, NvmlReader, NvmlReadError
from tests.conftest import run_async
from tests.helpers import metric, parse_metrics, skip_if_nvml_loads

POD = PodLabels("engine-pod-0", "inference", "engine")


def collector(nvml: FakeNvml, **kwargs) -> GpuPoller:
    options = dict(interval_s=1.0, timeout_s=1.0, backoff_max_s=60.0, pod=POD, hostname="node-a", scope="all")
    return GpuPoller(nvml, **{**options, **kwargs})


async def exposition(gpu: GpuPoller) -> dict:
    """One collection, rendered and read back as Prometheus would."""
    families = await gpu.poll()

    class Families:
        def collect(self):
            return families

    registry = CollectorRegistry()
    registry.register(Families())
    return parse_metrics(generate_latest(registry).decode())


def gpu_value(samples: dict, name: str, gpu: str = "0", **labels: str) -> float:
    matches = [value for (sample, sample_labels), value in samples.items()
               if sample == name and ("gpu", gpu) in sample_labels and set(labels.items()) <= sample_labels]
    assert len(matches) == 1, f"{name} gpu={gpu} {labels}: {len(matches)} samples"
    return matches[0]


@run_async
async def test_every_metric_in_base_units_with_device_and_pod_labels():
    nvml = fake_gpus(2)
    nvml.gpus[1].ecc_corrected, nvml.gpus[1].ecc_uncorrected = 12, 1
    gpu = collector(nvml)
    for snapshot in H100_SNAPSHOTS:  # the fake moves to its next snapshot each collection
        samples = await exposition(gpu)
        util, mem_util, used_mib, celsius, milliwatts, sm_mhz, mem_mhz, reasons = snapshot
        for index in ("0", "1"):
            assert gpu_value(samples, "sidecar_gpu_utilization_ratio", index) == pytest.approx(util / 100)
            assert gpu_value(samples, "sidecar_gpu_memory_utilization_ratio", index) == pytest.approx(mem_util / 100)
            assert gpu_value(samples, "sidecar_gpu_memory_used_bytes", index) == used_mib * MIB
            assert gpu_value(samples, "sidecar_gpu_memory_free_bytes", index) == (81_559 - used_mib) * MIB
            assert gpu_value(samples, "sidecar_gpu_memory_total_bytes", index) == 81_559 * MIB
            assert gpu_value(samples, "sidecar_gpu_temperature_celsius", index) == celsius
            assert gpu_value(samples, "sidecar_gpu_power_watts", index) == pytest.approx(milliwatts / 1000)
            assert gpu_value(samples, "sidecar_gpu_power_limit_watts", index) == 700
            assert gpu_value(samples, "sidecar_gpu_sm_clock_hertz", index) == sm_mhz * 1e6
            assert gpu_value(samples, "sidecar_gpu_memory_clock_hertz", index) == mem_mhz * 1e6
            for reason, bit in CLOCK_EVENT_REASONS.items():  # one series per reason
                assert gpu_value(samples, "sidecar_gpu_clock_throttle_reason_active", index,
                                 reason=reason) == float(bool(reasons & bit))
    assert gpu_value(samples, "sidecar_gpu_ecc_errors_total", "1", type="corrected") == 12
    assert gpu_value(samples, "sidecar_gpu_ecc_errors_total", "1", type="uncorrected") == 1
    assert gpu_value(samples, "sidecar_gpu_ecc_errors_total", "0", type="corrected") == 0
    assert metric(samples, "sidecar_gpus") == 2
    # Device identity and the pod on every per-GPU series.
    for (name, labels), _ in samples.items():
        if name.startswith("sidecar_gpu_"):
            names = dict(labels)
            assert names["uuid"].startswith("GPU-") and names["model_name"] == "NVIDIA H100 80GB HBM3"
            assert (names["pod"], names["namespace"], names["container"]) == ("engine-pod-0", "inference", "engine")
    assert gpu.gpu_count == 2


@run_async
async def test_pod_labels_are_left_out_when_unknown():
    samples = await exposition(collector(fake_gpus(1), pod=PodLabels()))
    labels = dict(next(labels for (name, labels) in samples if name == "sidecar_gpu_power_watts"))
    assert set(labels) == {"gpu", "uuid", "model_name"}


@run_async
async def test_unsupported_metrics_are_left_out_for_that_device_and_not_asked_again():
    nvml = fake_gpus(2)
    nvml.gpus[0].unsupported = {"nvmlDeviceGetPowerUsage", "nvmlDeviceGetTotalEccErrors",
                                "nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetComputeRunningProcesses"}
    gpu = collector(nvml)
    for _ in range(3):
        samples = await exposition(gpu)
    names_gpu0 = {name for (name, labels) in samples if ("gpu", "0") in labels}
    names_gpu1 = {name for (name, labels) in samples if ("gpu", "1") in labels}
    assert names_gpu1 - names_gpu0 == {
        "sidecar_gpu_power_watts", "sidecar_gpu_ecc_errors_total", "sidecar_gpu_clock_throttle_reason_active",
        "sidecar_gpu_engine_process_memory_bytes", "sidecar_gpu_engine_processes",
        "sidecar_gpu_other_process_memory_bytes", "sidecar_gpu_other_processes"}
    assert gpu_value(samples, "sidecar_gpu_power_limit_watts", "0") == 700
    # Unsupported calls were made once for GPU 0 (2 ECC kinds), every time for GPU 1.
    assert nvml.calls["nvmlDeviceGetPowerUsage"] == 1 + 3
    assert nvml.calls["nvmlDeviceGetTotalEccErrors"] == 2 + 2 * 3


@run_async
async def test_xid_events_are_counted_by_code():
    nvml = fake_gpus(2)
    gpu = collector(nvml, dcgm_compat=True)
    samples = await exposition(gpu)
    assert not [1 for name, _ in samples if name == "sidecar_gpu_xid_errors_total"]
    assert gpu_value(samples, "DCGM_FI_DEV_XID_ERRORS", "1") == 0
    nvml.gpus[1].pending_xids = [79, 13, 79]
    samples = await exposition(gpu)
    assert gpu_value(samples, "sidecar_gpu_xid_errors_total", "1", xid="79") == 2
    assert gpu_value(samples, "sidecar_gpu_xid_errors_total", "1", xid="13") == 1
    assert not [1 for (name, labels) in samples if name == "sidecar_gpu_xid_errors_total" and ("gpu", "0") in labels]
    assert gpu_value(samples, "DCGM_FI_DEV_XID_ERRORS", "1") == 79  # dcgm-exporter's: the last code seen
    nvml.gpus[1].pending_xids = [48]
    samples = await exposition(gpu)  # counters keep counting across collections
    assert gpu_value(samples, "sidecar_gpu_xid_errors_total", "1", xid="79") == 2
    assert gpu_value(samples, "sidecar_gpu_xid_errors_total", "1", xid="48") == 1


@run_async
async def test_dcgm_compatible_names_units_and_labels():
    gpu = collector(fake_gpus(1), dcgm_compat=True)
    samples = await exposition(gpu)
    util, mem_util, used_mib, celsius, milliwatts, sm_mhz, mem_mhz, reasons = H100_SNAPSHOTS[0]
    labels = {"gpu": "0", "UUID": "GPU-f4c2a6d0-3b9e-4f61-9d2c-8e1a7b5c3d00", "device": "nvidia0",
              "modelName": "NVIDIA H100 80GB HBM3", "Hostname": "node-a", "pod": "engine-pod-0",
              "namespace": "inference", "container": "engine"}
    expected = {"DCGM_FI_DEV_GPU_UTIL": util, "DCGM_FI_DEV_MEM_COPY_UTIL": mem_util,
                "DCGM_FI_DEV_FB_USED": used_mib, "DCGM_FI_DEV_FB_FREE": 81_559 - used_mib,
                "DCGM_FI_DEV_GPU_TEMP": celsius, "DCGM_FI_DEV_POWER_USAGE": milliwatts / 1000,
                "DCGM_FI_DEV_SM_CLOCK": sm_mhz, "DCGM_FI_DEV_MEM_CLOCK": mem_mhz,
                "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS": reasons, "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": 0,
                "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": 0, "DCGM_FI_DEV_XID_ERRORS": 0}
    for name, value in expected.items():
        assert samples[(name, frozenset(labels.items()))] == pytest.approx(value), name
    without = await exposition(collector(fake_gpus(1)))
    assert not [name for name, _ in without if name.startswith("DCGM_")], "dcgm names only behind the flag"


@pytest.mark.parametrize("fake, reason", [
    (FakeNvml(library_present=False), "no_library"),
    (FakeNvml(driver_loaded=False), "no_driver"),
    (FakeNvml(gpus=[]), "no_gpu"),
])
@run_async
async def test_no_nvml_no_driver_no_gpu_are_reported_and_recovered_from(fake, reason):
    gpu = collector(fake)
    with pytest.raises(PollError) as failure:
        await gpu.poll()
    assert failure.value.reason == reason and "GPU metrics are off" in str(failure.value)
    fake.library_present = fake.driver_loaded = True  # the driver arrives (a device plugin, a node fix)
    fake.gpus = fake.gpus or [FakeGpu("GPU-late")]
    samples = await exposition(gpu)
    assert metric(samples, "sidecar_gpus") == 1


@pytest.mark.parametrize("code, reason", [
    (pynvml.NVML_ERROR_NO_PERMISSION, "no_permission"),
    (pynvml.NVML_ERROR_INSUFFICIENT_POWER, "nvml_error"),  # anything else NVML can say
    (pynvml.NVML_ERROR_RESET_REQUIRED, "gpu_lost"),
])
@run_async
async def test_other_nvml_errors_are_counted_by_reason_and_pass(code, reason):
    nvml = fake_gpus(1)
    gpu = collector(nvml)
    await gpu.poll()
    nvml.errors["nvmlDeviceGetMemoryInfo"] = code
    with pytest.raises(PollError) as failure:
        await gpu.poll()
    assert failure.value.reason == reason
    del nvml.errors["nvmlDeviceGetMemoryInfo"]
    assert gpu_value(await exposition(gpu), "sidecar_gpu_memory_total_bytes") == 81_559 * MIB


@run_async
async def test_a_lost_gpu_is_reported_nvml_restarted_and_reading_resumes():
    nvml = fake_gpus(1)
    gpu = collector(nvml)
    await gpu.poll()
    nvml.lost = True  # e.g. XID 79, fallen off the bus
    with pytest.raises(PollError) as failure:
        await gpu.poll()
    assert failure.value.reason == "gpu_lost"
    assert not nvml.initialized, "NVML was shut down, to be opened afresh"
    nvml.lost = False  # reset and back
    samples = await exposition(gpu)
    assert nvml.init_calls == 2
    assert gpu_value(samples, "sidecar_gpu_memory_total_bytes") == 81_559 * MIB


@run_async
async def test_a_hung_nvml_call_times_out_without_piling_up_threads():
    nvml = fake_gpus(1)
    gpu = collector(nvml)
    await gpu.poll()
    nvml.hang_s = 0.5
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await gpu.poll()
    with pytest.raises(PollError) as failure:  # the thread is still inside NVML: do not start another
        await gpu.poll()
    assert failure.value.reason == "timeout"
    nvml.hang_s = 0.0
    while not gpu._running.done():  # the driver call returns in the end
        await asyncio.sleep(0.05)
    assert metric(await exposition(gpu), "sidecar_gpus") == 1
    await gpu.close()


@pytest.fixture
def process_tree():
    """A real parent and child process, marked so the engine finder can match the parent's command line."""
    marker = f"fake-engine-{os.getpid()}"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print(child.pid, flush=True); time.sleep(60)"), marker], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    yield marker, parent.pid, child_pid
    os.kill(child_pid, 9)
    parent.kill()
    parent.wait()


@run_async
async def test_gpu_memory_is_attributed_to_the_engine_process_tree(process_tree):
    marker, parent_pid, child_pid = process_tree
    from slo_sidecar.sidecar.engine_processes import engine_pids

    nvml = fake_gpus(1, processes=lambda: [(child_pid, 60 * 1024 ** 3), (parent_pid, 512 * MIB),
                                           (os.getpid(), 2 * 1024 ** 3), (999_999_999, None)])
    lookups = []

    def by_pattern() -> set[int]:
        lookups.append(1)
        return engine_pids(marker)

    for find in (by_pattern, lambda: engine_pids("no such engine", pid=parent_pid)):
        gpu = collector(nvml, engine_pids=find)
        for _ in range(3):
            samples = await exposition(gpu)
        assert gpu_value(samples, "sidecar_gpu_engine_process_memory_bytes") == 60 * 1024 ** 3 + 512 * MIB
        assert gpu_value(samples, "sidecar_gpu_engine_processes") == 2
        # Someone else's process, and one whose memory the driver cannot report.
        assert gpu_value(samples, "sidecar_gpu_other_process_memory_bytes") == 2 * 1024 ** 3
        assert gpu_value(samples, "sidecar_gpu_other_processes") == 2
    assert len(lookups) == 1, "/proc is read again only when a new PID appears on a GPU"


def test_the_real_no_gpu_path_on_this_machine():
    """No driver here: the real pynvml says so, and the reader turns it into a reason."""
    skip_if_nvml_loads()
    reader = NvmlReader(pynvml)
    with pytest.raises(NvmlReadError) as failure:
        reader.open()
    assert failure.value.reason in ("no_library", "no_driver")


def test_retry_delay_backs_off_while_failing_and_resets_after():
    class Gpu:
        interval_s, backoff_max_s = 2.0, 60.0

    class Engine:
        interval_s = backoff_max_s = 1.0

    assert [retry_delay(Gpu, failures) for failures in range(8)] == [2, 2, 4, 8, 16, 32, 60, 60]
    assert {retry_delay(Engine, failures) for failures in range(8)} == {1.0}


def test_cost_figures():
    figures = cost_figures(4.0, gpus=2, generation_tokens_per_second=1000.0)
    assert figures.pod_usd_per_hour == 8.0
    assert figures.usd_per_million_tokens == pytest.approx(8.0 / 3.6)  # $8 buys 3.6M tokens
    assert figures.tokens_per_gpu_hour == pytest.approx(1.8e6)
    idle = cost_figures(4.0, gpus=1, generation_tokens_per_second=0.0)
    assert idle.usd_per_million_tokens is None and idle.tokens_per_gpu_hour == 0
    assert cost_figures(4.0, 1, None).tokens_per_gpu_hour is None


def test_the_fake_raises_the_real_library_errors():
    nvml = FakeNvml()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetCount()
    nvml.nvmlInit()
    nvml.lost = True
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        nvml.nvmlDeviceGetUtilizationRates(nvml.nvmlDeviceGetHandleByIndex(0))


def gpus_in(samples: dict) -> set[str]:
    return {dict(labels)["gpu"] for (name, labels), _ in samples.items() if name == "sidecar_gpu_utilization_ratio"}


@run_async
async def test_only_the_pods_own_gpus_are_reported_not_the_nodes():
    """A node of 4 GPUs; the engine holds GPUs 1 and 3. Pod scope reports those two, and counts XIDs on them only."""
    engine_pid, other_pid = os.getpid(), 999_999_998
    nvml = fake_gpus(4)
    for index, gpu in enumerate(nvml.gpus):
        held_by = engine_pid if index in (1, 3) else other_pid
        gpu.processes = lambda held_by=held_by: [(held_by, 40 * 1024 ** 3)]
    nvml.gpus[0].pending_xids.append(79)  # another pod's GPU falls off the bus: not this pod's alert
    nvml.gpus[3].pending_xids.append(13)
    gpu = collector(nvml, scope="pod", engine_pids=lambda: {engine_pid})
    for _ in range(2):
        samples = await exposition(gpu)
    assert gpus_in(samples) == {"1", "3"} and metric(samples, "sidecar_gpus") == 2 and gpu.gpu_count == 2
    xids = {(dict(labels)["gpu"], dict(labels)["xid"]) for (name, labels), _ in samples.items()
            if name == "sidecar_gpu_xid_errors_total"}
    assert xids == {("3", "13")}

    # Data-corrupting XIDs are the correctness SLI's, on the pod's own GPUs whatever the scope.
    assert all(value == 0 for (name, _), value in samples.items() if name == "slo_gpu_data_corrupting_xids_total")

    # Once the engine says which GPUs its container was given, those are the pod's, whoever holds memory.
    told = collector(nvml, scope="pod", engine_pids=lambda: {engine_pid},
                     engine_gpus=lambda: frozenset({nvml.gpus[2].uuid}))
    assert gpus_in(await exposition(told)) == {"2"}
    assert metric(await exposition(collector(nvml, scope="all")), "sidecar_gpus") == 4


def test_pod_readings_prefer_what_the_engine_says_then_its_processes_then_nothing():
    from slo_sidecar.sidecar.gpu_poller import pod_readings
    from slo_sidecar.sidecar.nvml_reader import GpuIdentity, GpuReading

    readings = [GpuReading(GpuIdentity(i, f"GPU-{i}", "H100", i), engine_processes=p) for i, p in enumerate((0, 1, 0))]
    assert [r.identity.index for r in pod_readings(readings, frozenset({"GPU-2"}))] == [2]
    assert [r.identity.index for r in pod_readings(readings, frozenset())] == [1]
    assert pod_readings([r for r in readings if not r.identity.index == 1], frozenset()) == []


@run_async
async def test_data_corrupting_xids_on_the_pods_own_gpus_are_bad_correctness_events():
    """XIDs 48, 64, 94 and 95 (NVIDIA's catalogue: double-bit ECC, row remapping failure, contained and
    uncontained ECC) on a GPU the engine holds are counted, from 0, and burn the correctness SLO in the sidecar's
    live figures. Another XID, or one on another pod's GPU of the node, is neither."""
    from slo_sidecar.sidecar.slo_tracker import Sample, SloTracker
    from slo_sidecar.spec.load import parse_spec
    from slo_sidecar.spec.model import GOLDEN_PROBES

    spec = parse_spec("version: slo-sidecar/v1\nservice: llm\nslos:\n  - name: correctness\n    objective: 99\n"
                      "    sli:\n      correctness: {}\n", "slo.yaml")
    tracker = SloTracker(spec)
    identity = (("model_name", "m"),)
    tracker.observe([Sample(GOLDEN_PROBES, (("result", "good"), *identity), 0.0)], time.time())  # the engine is seen
    engine_pid, other_pid = os.getpid(), 999_999_998
    nvml = fake_gpus(2)
    for index, held_by in enumerate((engine_pid, other_pid)):
        nvml.gpus[index].processes = lambda held_by=held_by: [(held_by, 40 * 1024 ** 3)]
    for scope in ("pod", "all"):
        gpu = collector(nvml, scope=scope, engine_pids=lambda: {engine_pid}, tracker=tracker)
        samples = await exposition(gpu)
        counted = {dict(labels)["xid"]: value for (name, labels), value in samples.items()
                   if name == "slo_gpu_data_corrupting_xids_total"}
        assert counted == {"48": 0, "64": 0, "94": 0, "95": 0}, scope
        nvml.gpus[0].pending_xids += [48, 13, 95, 79]
        nvml.gpus[1].pending_xids += [48, 94]  # another pod's GPU
        samples = await exposition(gpu)
        assert metric(samples, "slo_gpu_data_corrupting_xids_total", model_name="m", xid="48") == 1, scope
        assert metric(samples, "slo_gpu_data_corrupting_xids_total", xid="95") == 1, scope
        assert metric(samples, "slo_gpu_data_corrupting_xids_total", xid="94") == 0, scope
    # Four bad events (two per scope), no good one: the live 5m ratio is all bad.
    state = next(s for s in tracker.states(time.time()) if s.slo.name == "correctness")
    window = next(w for w in state.windows if w.window == "5m")
    assert (window.error_ratio, window.events) == (1.0, 4), window


@run_async
async def test_the_pods_gpu_utilisation_for_slos_is_the_mean_of_its_own_gpus_with_the_service_identity():
    """slo_gpu_utilization_ratio: the mean, in the same scrape, of the per-GPU utilisation of the GPUs the engine
    holds (two of three here), labelled with the service's identity (the GPU series' own model_name is the
    GPU's product); absent until the engine has been seen, since nothing names the service before."""
    from slo_sidecar.sidecar.slo_tracker import Sample, SloTracker
    from slo_sidecar.spec.load import parse_spec
    from slo_sidecar.spec.model import GOLDEN_PROBES

    spec = parse_spec("version: slo-sidecar/v1\nservice: llm\nslos:\n  - name: correctness\n    objective: 99\n"
                      "    sli:\n      correctness: {}\n", "slo.yaml")
    tracker = SloTracker(spec)
    engine_pid = os.getpid()
    nvml = fake_gpus(3)
    for index, held_by in enumerate((engine_pid, engine_pid, 999_999_998)):
        nvml.gpus[index].processes = lambda held_by=held_by: [(held_by, 40 * 1024 ** 3)]
    nvml.gpus[1].snapshots = nvml.gpus[1].snapshots[1:] + nvml.gpus[1].snapshots[:1]  # another point of the cycle
    gpu = collector(nvml, scope="pod", engine_pids=lambda: {engine_pid}, tracker=tracker)
    before = await exposition(gpu)
    assert not any(name == "slo_gpu_utilization_ratio" for name, _ in before)
    tracker.observe([Sample(GOLDEN_PROBES, (("result", "good"), ("model_name", "m")), 0.0)], time.time())
    samples = await exposition(gpu)
    own = [gpu_value(samples, "sidecar_gpu_utilization_ratio", str(index)) for index in (0, 1)]
    assert own[0] != own[1], own
    assert metric(samples, "slo_gpu_utilization_ratio", model_name="m") == pytest.approx(sum(own) / 2)
    assert [dict(labels) for name, labels in samples if name == "slo_gpu_utilization_ratio"] == [{"model_name": "m"}]
