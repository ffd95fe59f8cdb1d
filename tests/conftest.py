"""Shared fixtures. The real engine starts once per test session (~25 s on 2 cores)."""

from __future__ import annotations

import asyncio
import functools

import pytest

from tests.helpers import EngineProcess
from tests.otlp_receiver import OtlpReceiver

pytest_plugins = ["tests.skip_policy"]  # a skip for a reason not allowed there fails the run

API_KEY = "test-key-0123456789"

# The suite runs on two workers, a file at a time each (pytest-xdist, pyproject's addopts), so that one waits on
# Prometheus or vLLM while the other computes. The slowest files go first, so neither worker ends the run alone
# on a long one: only an order, a file not named here runs after these.
SLOWEST_FILES = ("test_lab.py", "test_rules.py", "test_fleet_victoria.py", "test_prometheus_integration.py",
                 "test_soak.py", "test_engine_lifecycle.py", "test_recorded_windows.py", "test_stock_vllm.py",
                 "test_golden_engine.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order

# The session engine's limits, chosen so each behaviour is reachable quickly:
# 4 running + 2 waiting admitted, then 429; 5 s request timeout; 64 KiB bodies.
ENGINE_ARGS = (
    "--max-model-len", "1024",
    "--max-num-seqs", "4",
    "--max-waiting-requests", "2",
    "--request-timeout-s", "5",
    "--max-body-bytes", "65536",
    "--body-timeout-s", "3",
    "--api-key", API_KEY,
)


# The session engine exports its traces, fast, to a receiver in this process, and
# runs with the downward-API variables a Kubernetes pod would have.
TRACE_ENV = {
    "OTEL_SERVICE_NAME": "slo-sidecar-test",
    "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=test",
    "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    "OTEL_BSP_SCHEDULE_DELAY": "100",
    "POD_NAME": "engine-pod-0",
    "POD_NAMESPACE": "inference",
    "NODE_NAME": "node-a",
}


# vLLM's CPU build takes 90% of the machine's memory for its KV cache unless told: 1 GiB is plenty here.
CPU_KV_CACHE = {"VLLM_CPU_KVCACHE_SPACE": "1"}
# Tool calls as a user serving tools launches vLLM (test_api_parity gives our engine the same flags).
TOOLS = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes")
STOCK_QUEUED_LIMIT = 3  # stock vLLM refuses a request while this many are unfinished (a batch of 3 fits)


@pytest.fixture(scope="session")
def stock_vllm(tmp_path_factory):
    """vLLM's own server as a user launches it, no plugin of ours: the API parity's reference and the stock-vLLM
    tests' engine (one start for both, ~25 s). Tests read its counters as differences, never as totals."""
    from slo_sidecar.app.processes import VllmServerProcess
    from slo_sidecar.engine.tiny_model import MODEL_NAME, ensure_default_model

    workdir = tmp_path_factory.mktemp("stock-vllm")
    process = VllmServerProcess(workdir / "vllm.log", str(ensure_default_model()), "--served-model-name", MODEL_NAME,
                                "--max-model-len", "512", "--enforce-eager", "--max-num-queued-reqs",
                                str(STOCK_QUEUED_LIMIT), *TOOLS, env={"VLLM_PLUGINS": "none", **CPU_KV_CACHE})
    yield from serving(process)


@pytest.fixture(scope="session")
def otlp_receiver():
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


def serving(process: EngineProcess):
    """A fixture's body: the engine started and ready, then stopped in order (exit 0) or killed."""
    process.start()
    try:
        process.wait_ready()
        yield process
        assert process.stop() == 0, process.log_tail()
    finally:
        process.kill_group()


@pytest.fixture(scope="session")
def engine(tmp_path_factory, otlp_receiver):
    env = {**TRACE_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint}
    yield from serving(EngineProcess(tmp_path_factory.mktemp("engine") / "engine.log", *ENGINE_ARGS, env=env,
                                     fault_injection=True))


# The tenants' engine: the embedded model and three LoRA adapters (vLLM caches 2: retail's first request
# waits for its load), traced, with fault injection. Tests leave its faults off when they end.
LORA_ADAPTERS = ("medical", "legal", "retail")


@pytest.fixture(scope="session")
def lora_engine(tmp_path_factory, otlp_receiver):
    from slo_sidecar.engine.tiny_lora import ensure_lora

    modules = [f"{name}={ensure_lora(name)}" for name in LORA_ADAPTERS]
    env = {**TRACE_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint}
    yield from serving(EngineProcess(tmp_path_factory.mktemp("lora") / "engine.log", "--max-model-len", "512",
                                     "--enable-lora", "--max-loras", "2", "--max-lora-rank", "8", "--lora-modules",
                                     *modules, env=env, fault_injection=True))


def run_async(test):
    """Run an async test function on a fresh event loop (no plugin needed)."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return wrapper
