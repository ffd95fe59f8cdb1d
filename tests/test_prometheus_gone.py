"""Prometheus gone: nothing in the pod changes. The engine and the sidecar are scraped, never scrape
Prometheus, so killing it mid-scrape leaves both serving the same families, every collector up, and no
error counted."""

from __future__ import annotations

import signal
import time

import pytest

from tests.conftest import API_KEY
from tests.helpers import http_get, parse_metrics
from slo_sidecar.app.processes import PrometheusProcess, SidecarProcess

pytestmark = pytest.mark.engine


def families_and_errors(url: str) -> tuple[set[str], float, dict[str, float]]:
    status, body = http_get(url + "/metrics", timeout=10)
    assert status == 200
    samples = parse_metrics(body.decode())
    errors = sum(value for (name, _), value in samples.items()
                 if name in ("sidecar_collector_errors_total", "sidecar_exposition_errors_total"))
    up = {dict(labels)["collector"]: value for (name, labels), value in samples.items()
          if name == "sidecar_collector_up"}
    return {name for name, _ in samples}, errors, up


def test_killing_prometheus_changes_nothing_in_the_pod(engine, tmp_path):
    with SidecarProcess(tmp_path / "sidecar.log", engine.url, "--fake-gpu", "1", "--probe-interval-s", "1",
                        "--engine-pid", str(engine.process.pid),
                        env={"SLO_SIDECAR_ENGINE_API_KEY": API_KEY}).start() as sidecar:
        sidecar.wait_ready()
        targets = {"engine": engine.url.removeprefix("http://"), "sidecar": sidecar.url.removeprefix("http://")}
        with PrometheusProcess(tmp_path, targets, [], scrape_interval="1s").start() as prometheus:
            prometheus.wait_ready()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(prometheus.query("up == 1")) < 2:
                time.sleep(0.5)
            assert len(prometheus.query("up == 1")) == 2, "Prometheus never scraped both"
            before, errors_before, up_before = families_and_errors(sidecar.url)
            assert all(up_before.values()), up_before
            prometheus.process.send_signal(signal.SIGKILL)
            prometheus.process.wait(10)
        time.sleep(5)  # several engine scrapes, GPU reads and probes later
        after, errors_after, up_after = families_and_errors(sidecar.url)
        assert after == before
        assert errors_after == errors_before and up_after == up_before
        status, health = http_get(sidecar.url + "/health")
        assert status == 200 and b'"status": "ok"' in health
        assert http_get(engine.url + "/health")[0] == 200
