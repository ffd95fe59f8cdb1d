"""Shared fixtures. The real engine starts once per test session (~25 s on 2 cores)."""

from __future__ import annotations

import asyncio
import functools

import pytest

from tests.helpers import EngineProcess

API_KEY = "test-key-0123456789"

# The session engine's limits, chosen so each behaviour is reachable quickly:
# 4 running + 2 waiting admitted, then 429; 5 s request timeout; 64 KiB bodies.
ENGINE_ARGS = (
    "--max-model-len", "1024",
    "--max-num-seqs", "4",
    "--max-waiting-requests", "2",
    "--request-timeout-s", "5",
    "--max-body-bytes", "65536",
    "--api-key", API_KEY,
    "--enable-fault-injection",
)


@pytest.fixture(scope="session")
def engine(tmp_path_factory):
    process = EngineProcess(tmp_path_factory.mktemp("engine") / "engine.log", *ENGINE_ARGS).start()
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
