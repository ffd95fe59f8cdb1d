"""Shared fixtures. The real engine starts once per test session (~25 s on 2 cores)."""

from __future__ import annotations

import asyncio
import functools

import pytest

from tests.helpers import EngineProcess
from tests.otlp_receiver import OtlpReceiver

pytest_plugins = ["tests.skip_policy"]  # a skip for a reason not allowed there fails the run

API_KEY = "test-key-0123456789"

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


@pytest.fixture(scope="session")
def otlp_receiver():
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def engine(tmp_path_factory, otlp_receiver):
    env = {**TRACE_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint}
    process = EngineProcess(tmp_path_factory.mktemp("engine") / "engine.log", *ENGINE_ARGS, env=env,
                            fault_injection=True).start()
    try:
        process.wait_ready()
        yield process
        assert process.stop() == 0, process.log_tail()
    finally:
        process.kill_group()


def run_async(test):
    """Run an async test function on a fresh event loop (no plugin needed)."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return wrapper
