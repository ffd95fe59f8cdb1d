"""Start-up and shutdown of a real engine process: the API key from a file, loading, ready, /metrics on a port of
its own, drain on SIGTERM, exit 0."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from typing import Callable

import pytest

from tests.helpers import EngineProcess, descendants, free_port, http_get, pid_alive

pytestmark = pytest.mark.engine

API_KEY = "lifecycle-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def stream_in_thread(url: str, body: dict, result: dict, on_first_line: Callable[[], None] = lambda: None,
                     headers: dict[str, str] | None = None) -> threading.Thread:
    """Read a streamed answer in a thread; `on_first_line` runs as soon as the first line is in."""
    def read() -> None:
        request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json", **(headers or {})})
        with urllib.request.urlopen(request, timeout=60) as response:
            first_line = response.readline()
            result["first_line_at"] = time.monotonic()
            on_first_line()
            result["first_line"] = first_line
            result["rest"] = response.read()
            result["status"] = response.status

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_loading_then_ready_then_graceful_drain_on_sigterm(tmp_path):
    metrics_port = free_port()  # /metrics on a port of its own, as the Kubernetes NetworkPolicy wants it
    (tmp_path / "api-key").write_text(API_KEY + "\n")  # a mounted Secret
    engine = EngineProcess(tmp_path / "engine.log", "--max-model-len", "1024", "--drain-timeout-s", "60",
                           "--metrics-port", str(metrics_port), "--api-key-file", str(tmp_path / "api-key"),
                           fault_injection=True).start()
    try:
        # vLLM's server holds its port while the model loads but accepts no connection before it can serve:
        # Kubernetes' start-up probe fails until then. Its first answer is "ready", never an error.
        first_answer = None
        deadline = time.monotonic() + 120
        while first_answer is None and time.monotonic() < deadline and engine.process.poll() is None:
            try:
                first_answer = http_get(engine.url + "/ready", timeout=2)
            except OSError:
                time.sleep(0.1)
        assert first_answer == (200, b'{"status": "ready"}'), engine.log_tail()
        assert http_get(engine.url + "/health")[0] == 200
        assert _post(engine.url + "/v1/completions", {"prompt": "no key", "max_tokens": 2}, key=None)[0] == 401
        engine.wait_ready()
        status, exposition = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200 and b"vllm:num_requests_waiting" in exposition
        assert http_get(engine.url + "/metrics")[0] == 404  # not beside the API when it has its own port
        children = descendants(engine.process.pid)
        assert children, "AsyncLLM runs vLLM's engine core in child processes"

        # A stream is in flight when SIGTERM arrives; the injected token delay makes it
        # last >= 3 s however fast this machine generates.
        assert engine.set_faults(token_delay_s=0.01)["token_delay_s"] == 0.01
        result: dict = {}
        reader = stream_in_thread(engine.url + "/v1/completions",
                                  {"prompt": "drain", "max_tokens": 300, "stream": True, "ignore_eos": True}, result,
                                  headers=AUTH)
        while "first_line" not in result and reader.is_alive():
            time.sleep(0.01)
        engine.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)

        # Draining: not ready, no new work, but still alive.
        assert http_get(engine.url + "/ready") == (503, b'{"status": "draining"}')
        status, body = _post(engine.url + "/v1/completions", {"prompt": "late", "max_tokens": 2})
        assert status == 503 and json.loads(body)["error"]["code"] == "draining"

        reader.join(60)
        assert result["status"] == 200
        assert result["rest"].rstrip().endswith(b"data: [DONE]"), "the in-flight stream was cut off"
        assert b'"finish_reason":"length"' in result["rest"]

        assert engine.process.wait(90) == 0, engine.log_tail()
        deadline = time.monotonic() + 15
        while any(pid_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in children if pid_alive(pid)], "vLLM child processes left behind"
    finally:
        engine.kill_group()


def _post(url: str, body: dict, key: str | None = API_KEY) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={
        "Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
