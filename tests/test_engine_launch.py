"""The engine as vLLM's own OpenAI server with our instrumentation (engine/launch.py), launched as a process:
the embedded model by default, our flags beside vLLM's, the API key from a file, exit 0 on SIGTERM and exit
1 when vLLM's engine core dies (vLLM's own server exits 0 then)."""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.error
import urllib.request

import psutil
import pytest

from engine.launch import parse
from engine.tiny_model import MODEL_NAME
from slo_sidecar.processes import ManagedProcess, free_port
from tests.helpers import REPO, metric, parse_metrics

pytestmark = pytest.mark.engine

API_KEY = "launch-key-0123456789"


def launch(workdir, *args: str) -> tuple[ManagedProcess, str]:
    port = free_port()
    (workdir / "key").write_text(API_KEY)
    process = ManagedProcess("engine", [sys.executable, "-m", "engine.launch", "--host", "127.0.0.1", "--port",
                                        str(port), "--api-key-file", str(workdir / "key"), *args],
                             workdir / "engine.log", cwd=REPO)
    return process, f"http://127.0.0.1:{port}"


def request(url: str, body: dict | None = None, key: str | None = API_KEY) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=60) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


@pytest.mark.parametrize(("argv", "named"), [
    (["--max-waiting-requests", "many"], "--max-waiting-requests"),
    (["--admin-port", "9999"], "--admin-token-file"),
    (["--api-key-file", "/nonexistent/key"], "--api-key-file"),
])
def test_a_bad_flag_of_ours_exits_2_naming_it_before_vllm_loads(argv, named, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # an import of vLLM would fail: the check comes first
    with pytest.raises(SystemExit) as exited:
        parse(argv)
    assert exited.value.code == 2 and named in capsys.readouterr().err


def test_the_embedded_model_behind_the_key_then_sigterm_exits_0(tmp_path):
    process, url = launch(tmp_path, "--max-num-seqs", "4", "--max-waiting-requests", "1")
    with process.start():
        process.wait_http_ok(url + "/ready")
        assert request(url + "/v1/models", key=None)[0] == 401, "vLLM's own API key check, from our file"
        status, models = request(url + "/v1/models")
        assert status == 200 and [m["id"] for m in models["data"]] == [MODEL_NAME]
        status, answer = request(url + "/v1/completions", {"prompt": "launch", "max_tokens": 3, "n": 6})
        assert status == 429, "4 running + 1 waiting admitted: n=6 is refused before vLLM sees it"
        status, answer = request(url + "/v1/completions", {"prompt": "launch", "max_tokens": 3})
        assert status == 200 and answer["usage"]["completion_tokens"] == 3
        with urllib.request.urlopen(url + "/metrics", timeout=10) as scraped:
            samples = parse_metrics(scraped.read().decode())
        assert metric(samples, "slo_engine_http_requests_total", code="200", model=MODEL_NAME) == 1
        assert metric(samples, "slo_engine_max_waiting_requests") == 1
        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(60) == 0, process.log_tail()


def test_exits_1_when_vllms_engine_core_dies(tmp_path):
    process, url = launch(tmp_path)
    with process.start():
        process.wait_http_ok(url + "/ready")
        core = [child for child in psutil.Process(process.process.pid).children(recursive=True)
                if "EngineCore" in " ".join(child.cmdline()) or child.name().startswith("VLLM::EngineCore")]
        assert core, [child.cmdline() for child in psutil.Process(process.process.pid).children(recursive=True)]
        os.kill(core[0].pid, signal.SIGKILL)
        assert process.process.wait(60) == 1, process.log_tail()
