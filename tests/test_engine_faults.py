"""Faults a real engine process must survive or end cleanly: SIGTERM while the model loads, vLLM's engine
core killed mid-stream, and the CLI's bad values. Each measured fault prints its recovery time."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.helpers import EngineProcess, descendants, http_get, pid_alive
from tests.test_engine_lifecycle import stream_in_thread

pytestmark = pytest.mark.engine

SIGTERM_WHILE_LOADING_S = 5.0  # the bound: well inside any pod's grace period


def wait_for(condition, timeout_s: float, what: str, step_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step_s)
    raise AssertionError(f"not within {timeout_s:.0f} s: {what}")


def test_sigterm_while_the_model_loads_exits_0_at_once_and_leaves_no_process(tmp_path):
    engine = EngineProcess(tmp_path / "engine.log", "--max-model-len", "1024").start()
    try:
        # Loading, with vLLM's engine core already started: the longest part of a load is inside it. vLLM's server
        # holds its port but accepts no connection yet.
        children = wait_for(lambda: descendants(engine.process.pid), 120, "vLLM's engine core has started")
        with pytest.raises(OSError):
            http_get(engine.url + "/ready", timeout=2)
        signalled = time.monotonic()
        engine.process.send_signal(signal.SIGTERM)
        code = engine.process.wait(60)
        took = time.monotonic() - signalled
        print(f"\nSIGTERM while loading: exit {code} after {took:.2f} s")
        assert code == 0, engine.log_tail()
        assert took < SIGTERM_WHILE_LOADING_S, engine.log_tail()
        wait_for(lambda: not any(pid_alive(pid) for pid in children), 5, "vLLM's processes are gone")
        assert "Traceback" not in engine.log_path.read_text(errors="replace"), engine.log_tail()
    finally:
        engine.kill_group()


def test_sigterm_before_vllm_starts_its_server_exits_0(tmp_path):
    """A second in, the launcher is importing vLLM, before vLLM installs any handler of its own: a SIGTERM there
    killed the process (-15, what a fresh clone's busy run caught in the test above), now it exits 0."""
    engine = EngineProcess(tmp_path / "engine.log", "--max-model-len", "1024").start()
    try:
        time.sleep(1.0)
        assert engine.process.poll() is None and not (tmp_path / "engine.log").read_text().count("APIServer")
        engine.process.send_signal(signal.SIGTERM)
        assert engine.process.wait(60) == 0, engine.log_tail()
        assert "Traceback" not in engine.log_path.read_text(errors="replace"), engine.log_tail()
    finally:
        engine.kill_group()


def test_engine_core_killed_mid_stream_ends_the_stream_and_exits_non_zero(tmp_path):
    # 2,000 tokens: vLLM is still generating when the kill lands (at 300 the tiny model had finished
    # them all before it, and the paced stream then ended normally: a fresh-clone run saw that).
    engine = EngineProcess(tmp_path / "engine.log", "--max-model-len", "2048", fault_injection=True).start()
    try:
        engine.wait_ready()
        engine.set_faults(token_delay_s=0.01)  # and the client sees it slowly, whatever the machine's speed
        core = _engine_core(engine.process.pid)
        result: dict = {}
        # The reader kills the core the moment the first line arrives: polling for it from here left the
        # busy engine core (2,000 tokens in ~2 s on a loaded CI machine) time to finish first.
        reader = stream_in_thread(engine.url + "/v1/completions",
                                  {"prompt": "doomed", "max_tokens": 2000, "stream": True, "ignore_eos": True}, result,
                                  on_first_line=lambda: os.kill(core, signal.SIGKILL))
        wait_for(lambda: "first_line" in result or not reader.is_alive(), 60, "the stream started")
        killed = result.get("first_line_at", time.monotonic())

        reader.join(30)
        assert not reader.is_alive(), "the client's stream hangs after the engine core died"
        events = [line for line in (result["first_line"] + result.get("rest", b"")).splitlines() if line]
        assert result.get("status") == 200 and events[-1] == b"data: [DONE]", result
        error = json.loads(events[-2].removeprefix(b"data: "))["error"]
        assert error["code"] == 500, error  # a clean error event, not a cut connection
        stream_ended = time.monotonic() - killed

        health = _answer(engine.url + "/health")  # None once the process has gone
        assert health is None or health[0] == 503, health
        code = engine.process.wait(60)
        exited = time.monotonic() - killed
        print(f"\nengine core SIGKILLed: stream ended with an error event after {stream_ended:.2f} s, "
              f"/health {health and health[0]}, process exit {code} after {exited:.2f} s")
        assert code != 0, "Kubernetes restarts a container whose process exits non-zero"
        # vLLM logs the death of its engine core with a traceback of its own (lines it prefixes with its
        # process name); none comes from the server: no request ended in an unhandled exception.
        ours = [line for line in engine.log_path.read_text(errors="replace").splitlines()
                if "Traceback" in line and not line.startswith("(")]
        assert not ours and "unhandled error" not in engine.log_path.read_text(errors="replace"), engine.log_tail(80)
        wait_for(lambda: not descendants(engine.process.pid), 10, "no vLLM process left")
    finally:
        engine.kill_group()


def _engine_core(pid: int) -> int:
    """The engine-core child among the engine's descendants (vLLM names its process VLLM::EngineCore)."""
    for child in descendants(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as handle:
                if b"EngineCore" in handle.read():
                    return child
            with open(f"/proc/{child}/comm", "rb") as handle:
                if b"EngineCore" in handle.read():
                    return child
        except OSError:
            continue
    raise AssertionError(f"no EngineCore process among {descendants(pid)}")


def _answer(url: str) -> tuple[int, bytes] | None:
    try:
        return http_get(url, timeout=2)
    except OSError:
        return None
