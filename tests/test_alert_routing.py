"""Alerts reach Alertmanager from Prometheus: a real Prometheus evaluates the committed availability rules
live over a synthetic outage and sends through its `alerting` configuration to a real Alertmanager
running the generated configuration, which holds the ticket back behind the page.

The rules are the committed ones with one change, in a copy: every `for:` is 0s, so the page and the
ticket fire within seconds instead of after 1 and 10 real minutes. What is under test here is who
decides and delivers (Prometheus's rule manager, its notifier, Alertmanager's routes and inhibition),
which no `for:` changes; when they fire is tests/test_alert_timing.py's, to the evaluation.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from slo_sidecar.alerts.render import ALERTMANAGER_FILE
from slo_sidecar.app.processes import AlertmanagerProcess, PrometheusProcess
from tests.helpers import REPO

GENERATED = REPO / "generated" / "alerts"
RULES = GENERATED / "slo-availability.rules.yaml"
PER_SECOND = 200  # requests a second, each service: the ticket's 1d event guard (334) is met within seconds
SERVICES = {"lab-outage": 1.0, "lab-neighbour": 0.0}  # namespace -> share of requests failing

needs_binaries = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("prometheus-alertmanager") is None,
    reason="needs prometheus and prometheus-alertmanager (scripts/setup.sh installs both)")


class _Target(BaseHTTPRequestHandler):
    """Two services' engine counters, growing with time since the server started."""

    started = time.monotonic()

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        elapsed = time.monotonic() - self.started
        lines = ["# TYPE slo_engine_http_requests_total counter"]
        for namespace, failing in SERVICES.items():
            for code, share in (("200", 1 - failing), ("500", failing)):
                lines.append(f'slo_engine_http_requests_total{{endpoint="/v1/completions",code="{code}",'
                             f'namespace="{namespace}",model_name="tiny"}} {PER_SECOND * share * elapsed:.3f}')
        body = ("\n".join(lines) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@needs_binaries
def test_prometheus_sends_the_page_and_alertmanager_holds_the_ticket_behind_it(tmp_path):
    rules = tmp_path / RULES.name
    text, changed = re.subn(r"(?m)^    for: \S+$", "    for: 0s", RULES.read_text())
    assert changed >= 3, "the page's, the ticket's and the outage page's `for:`"
    rules.write_text(text)
    _Target.started = time.monotonic()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Target)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with AlertmanagerProcess(tmp_path, GENERATED / ALERTMANAGER_FILE).start() as manager:
            manager.wait_ready()
            with PrometheusProcess(tmp_path, {"engine": f"127.0.0.1:{server.server_port}"}, [rules],
                                   alertmanager_url=manager.url).start() as prometheus:
                prometheus.wait_ready()
                deadline = time.monotonic() + 90
                while True:
                    held = {(a["labels"]["namespace"], a["labels"]["alertname"], a["labels"]["tier"]): a["status"]
                            for a in manager.alerts()}
                    ticket = held.get(("lab-outage", "AvailabilitySLO", "ticket"))
                    if ticket and ticket["state"] == "suppressed" and len(held) >= 3:
                        break
                    assert time.monotonic() < deadline, f"not routed within 90 s: {held}"
                    time.sleep(0.5)
                routed = {(g["receiver"]["name"], a["labels"]["alertname"]) for g in manager.groups(inhibited=False)
                          for a in g["alerts"]}
    finally:
        server.shutdown()
    # The outage service's two pages (the burn rate and the total outage) are delivered to the page
    # receiver; its ticket reached Alertmanager from Prometheus and is inhibited by the page, so nothing
    # goes to the ticket receiver; the neighbour, at 0% failing, has nothing.
    assert held[("lab-outage", "AvailabilitySLO", "page")]["state"] == "active"
    assert held[("lab-outage", "AvailabilitySLOOutage", "page")]["state"] == "active"
    assert ticket["inhibitedBy"], held
    assert routed == {("page", "AvailabilitySLO"), ("page", "AvailabilitySLOOutage")}, routed
    assert not [key for key in held if key[0] == "lab-neighbour"], held
