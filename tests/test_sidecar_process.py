"""The real sidecar process: against a server of captured vLLM expositions, and against the real engine."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time

import aiohttp
import pytest

from slo_sidecar.app.processes import EngineProcess, SidecarProcess, http_get
from tests.conftest import run_async
from tests.fake_exposition_server import ExpositionServer
from tests.helpers import VLLM_EXPOSITION, metric, parse_metrics, post_json, skip_if_nvml_loads

INTERVAL = "0.2"


def scrape(sidecar: SidecarProcess) -> dict:
    status, body = http_get(sidecar.url + "/metrics")
    assert status == 200
    return parse_metrics(body.decode())


def wait_for(sidecar: SidecarProcess, condition, timeout_s: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout_s
    samples: dict = {}
    while True:
        try:
            samples = scrape(sidecar)
        except OSError:  # a starved runner (a timeout, a refused connection): the deadline decides
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
            continue
        if condition(samples):
            return samples
        if time.monotonic() > deadline:
            shown = {k: v for k, v in samples.items() if k[0].startswith(("sidecar_engine", "sidecar_collector"))}
            raise AssertionError(f"condition not met in {timeout_s} s; last scrape had {shown}")
        time.sleep(0.1)


def what_the_burst_met(engine: EngineProcess, burst: list[asyncio.Future]) -> str:
    """For a burst the sidecar never saw: what the engine itself says, and what the machine was doing."""
    done = [each for each in burst if each.done()]
    lines = [f"{len(done)} of {len(burst)} requests answered: {[each.result() for each in done if not each.exception()]}"]
    try:
        status, body = http_get(engine.url + "/metrics", timeout=10)
        lines += [line for line in body.decode().splitlines()
                  if line.startswith(("vllm:num_requests", "slo_engine_http_requests_in_flight"))]
    except OSError as exc:
        lines.append(f"engine /metrics: {exc!r}")
    for command in (["ss", "-ltn", f"sport = :{engine.port}"], ["ps", "-eo", "pid,ppid,stat,pcpu,rss,etime,args",
                                                               "--sort=-pcpu"]):
        with contextlib.suppress(OSError, subprocess.SubprocessError):  # a report, never a second failure
            output = subprocess.run(command, capture_output=True, text=True, timeout=10).stdout
            lines += [line[:160] for line in output.splitlines()[:25]]
    return "\n".join(lines)


def errors(samples: dict, reason: str) -> float:
    return metric(samples, "sidecar_collector_errors_total", collector="engine", reason=reason)


def served(samples: dict, name: str) -> bool:
    return any(sample == name for sample, _ in samples)


@pytest.fixture
def exposition_server():
    server = ExpositionServer(VLLM_EXPOSITION.read_text().replace(
        'vllm:num_requests_waiting{engine="0",model_name="tiny-llama"} 0.0',
        'vllm:num_requests_waiting{engine="0",model_name="tiny-llama"} 7.0')).start()
    yield server
    server.stop()


def test_bad_scrapes_are_counted_last_good_values_kept_then_withdrawn_when_stale(tmp_path, exposition_server):
    with SidecarProcess(tmp_path / "sidecar.log", exposition_server.url, "--engine-interval-s", INTERVAL,
                        "--engine-timeout-s", "1", "--stale-after-s", "1.5").start() as sidecar:
        sidecar.wait_ready()
        good = wait_for(sidecar, lambda s: metric(s, "sidecar_engine_up") == 1)
        assert metric(good, "sidecar_engine_queue_depth") == 7
        assert metric(good, "sidecar_engine_stale") == 0

        for mode in ("malformed", "truncated", "too_large", "http_500"):
            reason = {"http_500": "http_status"}.get(mode, mode)
            before = errors(scrape(sidecar), reason)
            exposition_server.mode = mode
            bad = wait_for(sidecar, lambda s: errors(s, reason) > before and metric(s, "sidecar_engine_up") == 0)
            if metric(bad, "sidecar_engine_stale") == 0:  # (a starved runner may take longer than 1.5 s)
                assert metric(bad, "sidecar_engine_queue_depth") == 7, "the last good value stays while fresh"
            else:
                assert not served(bad, "sidecar_engine_queue_depth"), "a stale value is served as live"
            exposition_server.mode = "good"
            wait_for(sidecar, lambda s: metric(s, "sidecar_engine_up") == 1)

        # A hung engine: the collector times out, and the sidecar's own /metrics does not wait for it.
        exposition_server.mode = "slow"
        started = time.monotonic()
        stale = wait_for(sidecar, lambda s: metric(s, "sidecar_engine_stale") == 1)
        assert metric(stale, "sidecar_engine_up") == 0 and errors(stale, "timeout") >= 1
        withdrawn = [name for name, _ in stale if name.startswith("sidecar_engine_")
                     and name not in ("sidecar_engine_up", "sidecar_engine_stale")]
        assert not withdrawn, f"stale engine values still served: {sorted(set(withdrawn))}"
        scrape_started = time.monotonic()
        scrape(sidecar)
        assert time.monotonic() - scrape_started < 0.5, "a scrape waited on the hung collector"
        # Stale only after stale_after_s (1.5 s) since the last success, which came up to one
        # interval (0.2 s) before the switch.
        assert time.monotonic() - started >= 1.5 - 0.2
        exposition_server.mode = "good"
        recovered = wait_for(sidecar, lambda s: metric(s, "sidecar_engine_up") == 1)
        assert metric(recovered, "sidecar_engine_stale") == 0
        assert metric(recovered, "sidecar_engine_queue_depth") == 7, "fresh values are served again"
        health = http_get(sidecar.url + "/health")
        assert health[0] == 200
        assert sidecar.stop() == 0


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_promtool_accepts_the_sidecar_exposition(tmp_path, exposition_server):
    with SidecarProcess(tmp_path / "sidecar.log", exposition_server.url, "--engine-interval-s", INTERVAL,
                        "--fake-gpu", "2", "--gpu-scope", "all", "--gpu-interval-s", INTERVAL, "--dcgm-compat", "true",
                        "--gpu-hourly-usd", "4", "--pod", "engine-pod-0", "--namespace", "inference",
                        "--container", "engine").start() as sidecar:
        sidecar.wait_ready()
        # Every family present, the windowed ones included (they need two scrapes).
        wait_for(sidecar, lambda s: metric(s, "sidecar_engine_up") == 1 and metric(s, "sidecar_gpus") == 2 and any(
            name == "sidecar_engine_latency_seconds" for name, _ in s))
        body = http_get(sidecar.url + "/metrics")[1].decode()
    assert 'sidecar_engine_latency_seconds{metric="ttft",percentile="99"}' in body
    samples = parse_metrics(body)
    assert metric(samples, "sidecar_gpu_power_limit_watts", gpu="1", model_name="NVIDIA H100 80GB HBM3",
                  pod="engine-pod-0", namespace="inference", container="engine") == 700
    assert metric(samples, "sidecar_cost_usd_per_hour") == 8  # two fake GPUs at $4

    def promtool(text: str) -> subprocess.CompletedProcess:
        return subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)

    # The sidecar's own names pass promtool's lint as they are.
    own = "\n".join(line for line in body.splitlines() if "DCGM_" not in line) + "\n"
    result = promtool(own)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    # dcgm-exporter's names keep its camelCase labels (modelName, UUID): that is the point of them,
    # and the lint's only complaint.
    complaints = promtool(body).stderr.decode().splitlines()
    assert complaints and all(line.startswith("DCGM_") and "camelCase" in line for line in complaints), complaints


def test_without_nvml_the_gpu_poller_is_down_logs_once_and_backs_off(tmp_path, exposition_server):
    skip_if_nvml_loads()
    with SidecarProcess(tmp_path / "sidecar.log", exposition_server.url, "--engine-interval-s", INTERVAL,
                        "--gpu-interval-s", "0.1", "--gpu-backoff-max-s", "0.8").start() as sidecar:
        sidecar.wait_ready()
        started = time.monotonic()
        wait_for(sidecar, lambda s: metric(s, "sidecar_engine_up") == 1)
        time.sleep(4)
        samples = scrape(sidecar)
        elapsed = time.monotonic() - started
        assert metric(samples, "sidecar_collector_up", collector="gpu") == 0
        tries = metric(samples, "sidecar_collector_errors_total", collector="gpu")
        assert tries == metric(samples, "sidecar_collector_errors_total", collector="gpu", reason="no_library")
        # Without backoff, one try per 0.1 s; with it, 0.1, 0.1, 0.2, 0.4, then every 0.8 s.
        assert 3 <= tries <= 4 + elapsed / 0.8, tries
        assert metric(samples, "sidecar_engine_up") == 1, "the engine side is unaffected"
        assert sidecar.stop() == 0
    log_lines = (tmp_path / "sidecar.log").read_text().splitlines()
    down = [line for line in log_lines if "poller gpu down" in line]
    assert len(down) == 1 and "libnvidia-ml.so" in down[0], log_lines


@pytest.mark.engine
@run_async
async def test_queue_depth_rises_under_a_burst_and_falls_after(tmp_path):
    # An engine of its own that runs one sequence at a time, and a burst long enough to outlast a stall
    # of the machine: 256 requests of 2000 tokens. Idle, the tiny model makes ~7,000 tokens/s here, so
    # the burst lasts over a minute; the one of 32 it replaces drained in 9 s, and on 2 busy cores a
    # stall (52 s seen here: no sampler ran, the sidecar's scrapes timed out) let it drain unseen.
    # The engine runs on one CPU, as in a pod whose containers have CPUs of their own: vLLM flat out
    # on both would starve the sidecar and this test of the CPU they need to watch it.
    # The burst is held until the sidecar has shown it, then the clients hang up, which aborts it all.
    # (No probes: the queue is the burst's alone. A 5 s scrape timeout: while vLLM streams the burst,
    # the engine's event loop answers /metrics late, and with the default 0.8 s the sidecar's first
    # good scrape came after the burst had drained.)
    waiting_allowed = 256
    engine_args = ("--max-model-len", "2048", "--max-num-seqs", "1",
                   "--max-waiting-requests", str(waiting_allowed))
    with EngineProcess(tmp_path / "engine.log", *engine_args, cpus=frozenset({0})).start() as engine, SidecarProcess(
            tmp_path / "sidecar.log", engine.url, "--engine-interval-s", INTERVAL, "--probe-interval-s", "0",
            "--engine-timeout-s", "5",
            "--gpu-hourly-usd", "4", "--gpus", "2").start() as sidecar:
        engine.wait_ready()
        sidecar.wait_ready()
        await asyncio.to_thread(wait_for, sidecar, lambda s: metric(s, "sidecar_engine_up") == 1)
        body = {"prompt": "burst", "max_tokens": 2000, "ignore_eos": True}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:  # all at once
            async def one() -> int:
                async with session.post(engine.url + "/v1/completions", json=body) as response:
                    await response.read()
                    return response.status

            burst = [asyncio.ensure_future(one()) for _ in range(waiting_allowed)]
            try:
                peak = await asyncio.to_thread(
                    wait_for, sidecar, lambda s: metric(s, "sidecar_engine_queue_depth") >= 2, 120.0)
            except (AssertionError, OSError) as exc:
                raise AssertionError(f"{exc!r}; {await asyncio.to_thread(what_the_burst_met, engine, burst)}")
            assert metric(peak, "sidecar_engine_running_requests") == 1
            # The generation rate shows while requests still wait (one scrape with both: in a full suite
            # the rate once first showed after the 8-request burst had drained, 15 s on).
            await asyncio.to_thread(wait_for, sidecar, lambda s: metric(
                s, "sidecar_engine_generation_tokens_per_second") > 0 and metric(s, "sidecar_engine_queue_depth") >= 1,
                45.0)
            for request in burst:
                request.cancel()
            await asyncio.gather(*burst, return_exceptions=True)
        after = await asyncio.to_thread(wait_for, sidecar, lambda s: metric(
            s, "sidecar_engine_queue_depth") == 0 and metric(s, "sidecar_engine_running_requests") == 0,
            30.0)  # within the 60 s rate window: the rate read below is still the burst's
        tokens_per_second = metric(after, "sidecar_engine_generation_tokens_per_second")
        assert tokens_per_second > 0
        # Cost from the same scrape's rate: two GPUs (no NVML here, so --gpus) at $4 an hour.
        assert metric(after, "sidecar_cost_usd_per_hour") == 8
        assert metric(after, "sidecar_cost_usd_per_million_generated_tokens") == pytest.approx(
            8 / (tokens_per_second * 3600) * 1e6)
        assert metric(after, "sidecar_generated_tokens_per_gpu_hour") == pytest.approx(tokens_per_second * 1800)


@pytest.mark.engine
def test_engine_death_reads_up_0_and_a_restart_brings_no_rate_spike(tmp_path):
    port_engine = EngineProcess(tmp_path / "engine-1.log", "--max-model-len", "1024")
    interval = 0.5
    with port_engine.start() as first, SidecarProcess(
            tmp_path / "sidecar.log", first.url, "--engine-interval-s", str(interval),
            "--engine-timeout-s", "0.4", "--rate-window-s", "2", "--stale-after-s", "2",
            "--gpu-hourly-usd", "2.5").start() as sidecar:
        first.wait_ready()
        sidecar.wait_ready()
        for _ in range(3):  # counters worth a spike if the restart's reset were mishandled
            post_json(first.url + "/v1/completions", {"prompt": "x", "max_tokens": 200, "ignore_eos": True})
        wait_for(sidecar, lambda s: metric(s, "sidecar_engine_up") == 1
                 and metric(s, "sidecar_engine_generation_tokens_per_second") > 0)

        first.kill_group()  # the engine dies without a goodbye
        killed_at = time.monotonic()
        wait_for(sidecar, lambda s: metric(s, "sidecar_engine_up") == 0, timeout_s=10)
        assert time.monotonic() - killed_at <= 2 * interval + 0.4 + 0.5  # two intervals, one timeout, slack
        assert sidecar.process.poll() is None, "the sidecar outlives the engine"
        # Past stale_after_s the HPA's metric and the cost per token are withdrawn, not frozen.
        gone = wait_for(sidecar, lambda s: not served(s, "sidecar_engine_queue_depth"), timeout_s=10)
        assert not served(gone, "sidecar_cost_usd_per_million_generated_tokens")
        assert metric(gone, "sidecar_engine_up") == 0 and metric(gone, "sidecar_engine_stale") == 1
        assert metric(gone, "sidecar_cost_usd_per_hour") == 2.5, "what the GPUs cost does not depend on the engine"

        with EngineProcess(tmp_path / "engine-2.log", "--max-model-len", "1024", port=first.port).start() as second:
            second.wait_ready()
            # Counters began again at 0. Read as Prometheus's rate() does, the increase across
            # the reset is the new value (0 here): a mishandled reset reads -600 or +huge.
            back = wait_for(sidecar, lambda s: metric(s, "sidecar_engine_up") == 1, timeout_s=30)
            time.sleep(3 * interval)
            settled = scrape(sidecar)
            for samples in (back, settled):
                rate = metric(samples, "sidecar_engine_generation_tokens_per_second")
                assert 0 <= rate < 1, f"rate spike after the restart: {rate}"


def test_slo_state_is_saved_on_shutdown_and_restored_at_start(tmp_path, exposition_server):
    state = tmp_path / "slo-state.json"
    for run in (1, 2):
        with SidecarProcess(tmp_path / f"sidecar-{run}.log", exposition_server.url, "--engine-interval-s", INTERVAL,
                            "--slo-state-file", str(state)).start() as sidecar:
            sidecar.wait_ready()
            wait_for(sidecar, lambda s: metric(s, "sidecar_engine_up") == 1
                     and metric(s, "slo_objective_ratio", slo="availability") == 0.999)
            assert sidecar.stop() == 0
        assert state.exists(), "written atomically on SIGTERM"
    log = (tmp_path / "sidecar-2.log").read_text()
    assert "SLO state restored" in log, log
    other_spec = state.read_text().replace('"fingerprint":"', '"fingerprint":"x')
    state.write_text(other_spec)
    with SidecarProcess(tmp_path / "sidecar-3.log", exposition_server.url, "--slo-state-file", str(state)
                        ).start() as sidecar:
        sidecar.wait_ready()
        samples = scrape(sidecar)
        assert metric(samples, "sidecar_slo_state_discarded_total", reason="other_spec") == 1
        assert metric(samples, "sidecar_slo_state_discarded_total") == 1
        assert metric(samples, "sidecar_slo_state_save_errors_total") == 0
        assert sidecar.stop() == 0
    assert "written for another SLO spec" in (tmp_path / "sidecar-3.log").read_text()
    assert (tmp_path / "slo-state.json.discarded").read_text() == other_spec, "set aside, not overwritten"
    assert '"fingerprint":"x' not in state.read_text(), "saved afresh at shutdown"
