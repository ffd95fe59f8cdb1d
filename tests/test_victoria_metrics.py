"""The rules run unchanged on VictoriaMetrics: the real victoria-metrics, vmagent and vmalert (Debian's
`victoria-metrics` package, which scripts/setup.sh installs) and a real Alertmanager.

vmagent scrapes a counter every second and remote-writes it into a single-node VictoriaMetrics; vmalert
evaluates a recording and an alerting rule over it every second, writes what it records back and sends the
alert to Alertmanager. VictoriaMetrics also takes history backfilled with past timestamps.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time

import pytest
import yaml
from aiohttp import web

from slo_sidecar.app.processes import AlertmanagerProcess
from tests.victoria import VictoriaMetricsProcess, VmagentProcess, VmalertProcess
from tests.helpers import REPO
from tests.threaded_server import ThreadedServer

pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("victoria-metrics", "vmagent", "vmalert", "prometheus-alertmanager")),
    reason="needs victoria-metrics, vmagent and vmalert (Debian package victoria-metrics) and prometheus-alertmanager;"
           " scripts/setup.sh installs them")

RATE = 10.0  # the counter's increase per second

# Written as the generated rules are: a colon-named recording with labels, an alert with `for: 0s`, a label and
# annotations with templates and the humanize functions the generated annotations use.
RULES = """groups:
- name: vm-harness-recordings
  rules:
  - record: job:harness_requests:rate10s
    expr: sum by (job) (rate(harness_requests_total{code="200"}[10s]))
    labels:
      sloth_window: 10s
- name: vm-harness-alerts
  rules:
  - alert: HarnessRequestsFlowing
    expr: sum by (job) (rate(harness_requests_total{code="200"}[10s])) > 1
    for: 0s
    labels:
      severity: warning
      tier: ticket
      source_job: '{{ $labels.job }}'
    annotations:
      summary: '{{ $labels.job }} serves {{ $value | humanize }} requests per second'
      description: 'ratio {{ 0.25 | humanizePercentage }}, period {{ 90 | humanizeDuration }}'
"""

ALERTMANAGER_CONFIG = {"route": {"receiver": "nowhere", "group_wait": "1s"}, "receivers": [{"name": "nowhere"}]}


class CounterServer(ThreadedServer):
    """/metrics with one counter growing RATE a second, from the moment it started."""

    def __init__(self) -> None:
        super().__init__()
        self.started = time.monotonic()

    async def _metrics(self, request: web.Request) -> web.Response:
        value = (time.monotonic() - self.started) * RATE
        return web.Response(text="# HELP harness_requests_total Requests served.\n"
                                 "# TYPE harness_requests_total counter\n"
                                 f'harness_requests_total{{code="200"}} {value:.3f}\n')

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/metrics", self._metrics)


def wait_for(what: str, probe, timeout_s: float, *logs) -> object:
    """probe()'s first truthy answer, polled every 0.25 s; the processes' logs in the failure."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = probe()
        if answer:
            return answer
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {process.name}\n{process.log_tail(15)}" for process in logs)
            pytest.fail(f"{what}: not within {timeout_s:.0f} s (last answer {answer!r})\n{tails}")
        time.sleep(0.25)


def flushed_query(vm: VictoriaMetricsProcess, expr: str):
    """A probe for wait_for: the answer once what VictoriaMetrics received is searchable (a new series
    otherwise waits ~10 s for its index flush; vmalert's queries, made meanwhile, then see it too)."""
    return lambda: (vm.force_flush(), vm.query(expr))[1]


def test_vmalert_accepts_the_generated_rules():
    """Every generated rule file, unchanged: expressions parsed by MetricsQL, templates by vmalert."""
    files = sorted((REPO / "generated" / "alerts").glob("*.rules.yaml"))
    assert files
    result = subprocess.run(["vmalert", "-dryRun", "-loggerLevel=ERROR", *(f"-rule={path}" for path in files)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_scraped_recorded_and_alerted_through_victoria_metrics(tmp_path):
    (tmp_path / "rules.yaml").write_text(RULES)
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(ALERTMANAGER_CONFIG))
    server = CounterServer().start()
    with contextlib.ExitStack() as stack:
        stack.callback(server.stop)
        vm = stack.enter_context(VictoriaMetricsProcess(tmp_path).start())
        alertmanager = stack.enter_context(AlertmanagerProcess(tmp_path, tmp_path / "alertmanager.yml").start())
        vm.wait_ready()
        alertmanager.wait_ready()
        scrape_config = {"global": {"scrape_interval": "1s"},
                         "scrape_configs": [{"job_name": "harness",
                                             "static_configs": [{"targets": [server.url.removeprefix("http://")]}]}]}
        vmagent = stack.enter_context(VmagentProcess(tmp_path, vm.write_url, scrape_config).start())
        vmalert = stack.enter_context(VmalertProcess(
            tmp_path, [tmp_path / "rules.yaml"], datasource_url=vm.url, remote_write_url=vm.url,
            remote_read_url=vm.url, notifier_url=alertmanager.url, evaluation_interval="1s").start())
        vmagent.wait_ready()
        vmalert.wait_ready()
        processes = (vm, vmagent, vmalert, alertmanager)

        # The scrape lands in VictoriaMetrics with the target's labels and `up`, as Prometheus would store it.
        wait_for("the scraped counter in VictoriaMetrics", flushed_query(vm, 'harness_requests_total{job="harness"}'),
                 15, *processes)
        assert vm.query('up{job="harness"}')[0]["value"][1] == "1"

        # The alert reaches Alertmanager, its templates expanded.
        received = wait_for("the alert at Alertmanager", lambda: [
            a for a in alertmanager.alerts() if a["labels"].get("alertname") == "HarnessRequestsFlowing"], 15, *processes)
        labels, annotations = received[0]["labels"], received[0]["annotations"]
        assert labels["source_job"] == "harness" and labels["severity"] == "warning" and labels["job"] == "harness"
        assert annotations["description"] == "ratio 25%, period 1m 30s"
        assert annotations["summary"].startswith("harness serves ")
        assert received[0]["status"]["state"] == "active"
        # Unlike Prometheus, vmalert adds the rule's group as a label (the generated routing and inhibitions
        # match on other labels only); -disableAlertgroupLabel would leave it out.
        assert labels["alertgroup"] == "vm-harness-alerts"

        # The recorded series was written back and is queryable, with the rule's labels, near the counter's rate.
        recorded = wait_for("the recorded series in VictoriaMetrics",
                            flushed_query(vm, "job:harness_requests:rate10s"), 15, *processes)
        assert recorded[0]["metric"] == {"__name__": "job:harness_requests:rate10s", "job": "harness",
                                         "sloth_window": "10s"}
        assert RATE * 0.5 < float(recorded[0]["value"][1]) < RATE * 1.5
        # ...and so is the ALERTS series, from which a restarted vmalert restores its alerts' state.
        assert wait_for("ALERTS in VictoriaMetrics", flushed_query(
            vm, 'ALERTS{alertname="HarnessRequestsFlowing", alertstate="firing"}'), 10, *processes)

        # vmalert loaded both groups and evaluates every rule without error.
        groups = {group["name"]: group for group in vmalert.rule_groups()}
        assert set(groups) == {"vm-harness-recordings", "vm-harness-alerts"}
        for group in groups.values():
            for rule in group["rules"]:
                assert not rule.get("lastError"), rule
        firing = [a for a in vmalert.alerts() if a["name"] == "HarnessRequestsFlowing"]
        assert firing and firing[0]["state"] == "firing"

        for process in (vmalert, vmagent, alertmanager, vm):
            assert process.stop() == 0, process.log_tail()


def test_backfilled_history_is_queried_at_past_times(tmp_path):
    """An hour of history imported at once, a sample a minute growing 10 each: VictoriaMetrics answers for the past."""
    with VictoriaMetricsProcess(tmp_path).start() as vm:
        vm.wait_ready()
        now = time.time()
        start = now - 3600
        vm.import_prometheus("".join(f'backfilled_requests_total{{job="old",code="200"}} {minute * 10} '
                                     f"{int((start + minute * 60) * 1000)}\n" for minute in range(61)))
        assert vm.query("backfilled_requests_total", at=start + 30 * 60 + 1) == [
            {"metric": {"__name__": "backfilled_requests_total", "job": "old", "code": "200"},
             "value": [pytest.approx(start + 30 * 60 + 1, abs=0.01), "300"]}]
        increase = vm.query('increase(backfilled_requests_total{job="old"}[30m])', at=start + 40 * 60 + 1)
        assert float(increase[0]["value"][1]) == pytest.approx(300)
        assert vm.query("backfilled_requests_total", at=start - 600) == [], "nothing before the history"
        assert vm.stop() == 0, vm.log_tail()
