"""The error-budget policy (an SLO's `policy`): its spec errors, and its recordings replayed through Prometheus's
own rule engine (promtool) against minutes worked out here from the budget's arithmetic, not from the rules.

Two pods of one service (namespace a and b), 600 requests a minute each, availability at 99% (a budget of 1% of
the requests), releases frozen below half the period's budget left or above a burn of 5 over 1 hour (the
fastest page's long window for 30 days):

- Pod a: healthy for 60 minutes, then 1% of its requests fail (a burn of 1, never above 5). The period's ratio
  t minutes in is 0.01 (t - 60) / t; half the budget is spent once that passes 0.005, at t = 120.
- Pod b: healthy for 1,200 minutes, then 10% fail (a burn of 10). Its 1-hour ratio is 0.1 (t - 1200) / 60 until
  the hour is full: a burn of 5 at t = 1230. Its period's ratio 0.1 (t - 1200) / t passes 0.005 at
  t = 1200 / 0.95 = 1263.2: from then on the budget, the first reason, is what holds releases back.

Each state is checked on the last whole minute before its crossing and the first after it; for the burn, the
one after that: the SLO's verdict reads the 1-hour ratio, recorded in another group, one evaluation late.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest
import yaml
from aiohttp import web

from slo_sidecar.alerts.render import RELEASE_POLICY_FILE, render, rules_file
from slo_sidecar.spec.load import SpecError, parse_spec
from slo_sidecar.app.processes import PrometheusProcess
from slo_sidecar.dashboards.definitions import RELEASES_ROW, slo_overview
from slo_sidecar.dashboards.model import expand
from tests.helpers import promtool_counter
from tests.test_rules import needs_promtool
from tests.threaded_server import ThreadedServer

SPEC = """version: slo-sidecar/v1
service: llm
slos:
  - name: availability
    objective: 99
    sli:
      availability:
        errors: {{metric: http_requests_total, matchers: ['code=~"5.."']}}
        total: {{metric: http_requests_total}}
    policy: {policy}
"""
POLICY = "{freeze_below_budget: 0.5, freeze_above_burn: 5}"
PER_MINUTE = 600.0
PODS = {"a": (60, 0.01), "b": (1200, 0.10)}  # healthy minutes, then the share of requests that fail
LENGTH_MIN = 1280

# (minute, pod, the service's verdict: 1 releases may go / 0 frozen, its reason)
EXPECTED = [
    (30, "a", 1, "none"), (119, "a", 1, "none"), (121, "a", 0, "budget"), (400, "a", 0, "budget"),
    (1000, "b", 1, "none"), (1229, "b", 1, "none"), (1232, "b", 0, "burn"), (1262, "b", 0, "burn"),
    (1264, "b", 0, "budget"),
]


def series() -> list[dict[str, str]]:
    out = []
    for pod, (healthy_min, failing) in PODS.items():
        ratio = [failing if minute > healthy_min else 0.0 for minute in range(LENGTH_MIN + 1)]
        labels = f'namespace="{pod}", model_name="m"'
        out.append({"series": f'http_requests_total{{{labels}, code="500"}}',
                    "values": promtool_counter([PER_MINUTE * r for r in ratio])})
        out.append({"series": f'http_requests_total{{{labels}, code="200"}}',
                    "values": promtool_counter([PER_MINUTE * (1 - r) for r in ratio])})
    return out


@needs_promtool
def test_releases_freeze_when_the_budgets_arithmetic_says_and_name_why(tmp_path):
    spec = parse_spec(SPEC.format(policy=POLICY), "slo.yaml")
    files = render(spec)
    for name in (rules_file(spec.slos[0]), RELEASE_POLICY_FILE):
        (tmp_path / name).write_text(files[name])
    checks = [{"eval_time": f"{minute}m", "expr": f'slo:release_allowed{{namespace="{pod}"}}',
               "exp_samples": [{"labels": (f'slo:release_allowed{{sloth_service="llm", namespace="{pod}", '
                                           f'model_name="m", reason="{reason}"}}'), "value": value}]}
              for minute, pod, value, reason in EXPECTED]
    test = {"rule_files": [rules_file(spec.slos[0]), RELEASE_POLICY_FILE], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": series(), "promql_expr_test": checks}]}
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test, sort_keys=False))
    result = subprocess.run(["promtool", "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_no_policy_no_release_rules():
    spec = parse_spec(SPEC.replace("    policy: {policy}\n", "").format(), "slo.yaml")
    files = render(spec)
    assert RELEASE_POLICY_FILE not in files and "release" not in files[rules_file(spec.slos[0])]


def test_a_policy_without_a_burn_bound_freezes_on_the_budget_alone():
    files = render(parse_spec(SPEC.format(policy="{freeze_below_budget: 0.25}"), "slo.yaml"))
    reasons = [rule["labels"]["reason"] for group in yaml.safe_load(files["slo-availability.rules.yaml"])["groups"]
               for rule in group["rules"] if rule.get("record") == "slo:release_frozen:bool"]
    assert reasons == ["budget"]


def test_the_services_policy_holds_for_every_slo_that_sets_none_of_its_own():
    """The top-level `policy` is each SLO's; an SLO's own replaces it; `policy: null` opts an SLO out."""
    spec = parse_spec("""version: slo-sidecar/v1
service: llm
policy: {freeze_below_budget: 0}
slos:
  - {name: a, objective: 99, sli: {availability: {errors: {metric: e_total}, total: {metric: t_total}}}}
  - {name: b, objective: 99, sli: {availability: {errors: {metric: e_total}, total: {metric: t_total}}},
     policy: {freeze_below_budget: 0.5, freeze_above_burn: 5}}
  - {name: c, objective: 99, sli: {availability: {errors: {metric: e_total}, total: {metric: t_total}}},
     policy: null}
""", "slo.yaml")
    assert [(slo.policy.freeze_below_budget, slo.policy.freeze_above_burn) if slo.policy else None
            for slo in spec.slos] == [(0.0, None), (0.5, 5.0), None]
    # 0 is the Workbook's policy: frozen once the budget left is below 0, i.e. spent.
    frozen = [rule for group in yaml.safe_load(render(spec)["slo-a.rules.yaml"])["groups"] for rule in group["rules"]
              if rule.get("record") == "slo:release_frozen:bool"]
    assert [rule["expr"].endswith("< bool 0") for rule in frozen] == [True], frozen
    with pytest.raises(SpecError, match=r"^slo.yaml:3: policy.freeze_below_budget: .*got 2"):
        parse_spec(SPEC.format(policy="null").replace("slos:", "policy: {freeze_below_budget: 2}\nslos:"),
                   "slo.yaml")


@pytest.mark.parametrize("policy, reason", [
    ("{}", "missing field 'freeze_below_budget'"),
    ("{freeze_below_budget: -0.1}", "a number in [0, 1] (0: once it is spent), got -0.1"),
    ("{freeze_below_budget: 1.5}", "a number in [0, 1] (0: once it is spent), got 1.5"),
    ("{freeze_below_budget: '0.5'}", "got '0.5'"),
    ("{freeze_below_budget: 0.5, freeze_above_burn: -1}", "policy.freeze_above_burn: expected a burn rate > 0"),
    ("{freeze_below_budget: 0.5, freeze_when: never}", "freeze_when"),
    ("[0.5]", "policy"),
])
def test_a_bad_policy_names_its_field_and_the_reason(policy, reason):
    with pytest.raises(SpecError) as raised:
        parse_spec(SPEC.format(policy=policy), "slo.yaml")
    assert reason in str(raised.value) and "slos[0].policy" in str(raised.value), raised.value


# --- `slo-sidecar budget` against a real Prometheus ---------------------------------------------------------

class GrowingCounters(ThreadedServer):
    """Two services' request counters, each growing at its own rates from the server's start: `healthy` answers
    every request, `failing` fails half (far past any budget, so its policy freezes releases at once)."""

    RATES = {"healthy": {"200": 10.0, "500": 0.0}, "failing": {"200": 5.0, "500": 5.0}}  # per second

    def __init__(self) -> None:
        super().__init__()
        self.started = time.monotonic()

    async def _metrics(self, request: web.Request) -> web.Response:
        elapsed = time.monotonic() - self.started
        lines = []
        for service, rates in self.RATES.items():
            lines.append(f"# TYPE {service}_requests_total counter")
            lines += [f'{service}_requests_total{{namespace="ns", model_name="m", code="{code}"}} {rate * elapsed}'
                      for code, rate in rates.items()]
        return web.Response(text="\n".join(lines) + "\n")

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/metrics", self._metrics)


def budget(prometheus_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slo_sidecar.app.cli", "budget", "--prometheus", prometheus_url,
                           *args], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Prometheus (Debian package) not installed")
def test_budget_exits_1_for_a_frozen_service_and_0_for_a_healthy_one(tmp_path):
    rule_files = []
    for service in GrowingCounters.RATES:
        spec = parse_spec(SPEC.format(policy=POLICY).replace("service: llm", f"service: {service}")
                          .replace("http_requests_total", f"{service}_requests_total"), f"{service}.yaml")
        for name, text in render(spec).items():
            if name.endswith(".rules.yaml"):
                rule_files.append(tmp_path / f"{service}-{name}")
                rule_files[-1].write_text(text)
    server = GrowingCounters().start()
    prometheus = PrometheusProcess(tmp_path, {"pods": f"127.0.0.1:{server.port}"}, rule_files).start()
    try:
        prometheus.wait_ready()
        # Every recording in place: the period's budget (long-window group) comes a few evaluations after the
        # 1-hour burn, so the failing service reads `burn` first, then `budget`, the first reason.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
                prometheus.query('slo:release_allowed{sloth_service="failing", reason="budget"}')
                and prometheus.query('slo:release_allowed{sloth_service="healthy"}')):
            time.sleep(1)
        # The SLO dashboard's Releases panel, as Grafana sends its query with every variable on All.
        panel = next(panel for title, panels in slo_overview(spec).rows if title == RELEASES_ROW for panel in panels)
        shown = {sample["metric"]["sloth_service"]: (float(sample["value"][1]), sample["metric"]["reason"])
                 for query in panel.queries
                 for sample in prometheus.query(expand(query.expr.replace('sloth_service="failing"',
                                                                            'sloth_service=~".+"')))}
        healthy, failing, every, nosuch = (budget(prometheus.url, *args) for args in (
            ("--service", "healthy"), ("--service", "failing"), (), ("--service", "nosuch")))
        down = budget("http://127.0.0.1:1")
    finally:
        prometheus.stop()
        server.stop()
    assert shown == {"healthy": (0.0, "none"), "failing": (1.0, "budget")}, shown  # 1: frozen, in red
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "healthy model_name=m namespace=ns: releases allowed" in healthy.stdout, healthy.stdout
    assert failing.returncode == 1, failing.stdout + failing.stderr
    assert "failing model_name=m namespace=ns: releases FROZEN (budget)" in failing.stdout, failing.stdout
    assert "freezes releases: budget, burn" in failing.stdout  # its SLO's row names both reasons
    assert every.returncode == 1 and "releases allowed" in every.stdout and "FROZEN" in every.stdout
    assert nosuch.returncode == 2 and "no slo:period_error_budget_remaining:ratio for service 'nosuch'" in nosuch.stderr
    assert down.returncode == 2 and "error: http://127.0.0.1:1" in down.stderr and "Traceback" not in down.stderr
