"""The load-test gate: percentiles, judgement against the spec, and real runs against the engine."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import urllib.request

import pytest

from slo_sidecar.app.gate import judge, percentile, samples_by_name, server_events, verdict
from slo_sidecar.app.loadgen import RequestResult
from slo_sidecar.app.processes import free_port
from slo_sidecar.spec.load import DEFAULT_SPEC, load_spec
from tests.conftest import API_KEY

SPEC = load_spec(str(DEFAULT_SPEC))


def test_percentile_interpolates_between_ranks():
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    assert percentile([5.0], 0.99) == 5.0
    assert percentile(list(range(101)), 0.99) == 99
    assert math.isnan(percentile([], 0.5))



def test_the_engines_events_between_two_scrapes_count_a_restart_from_zero():
    """As Prometheus's increase(): per series, after - before, or after alone where the counter went down
    (the engine restarted between the scrapes); a series first seen at the end counts from zero."""
    slo = next(slo for slo in load_spec(str(DEFAULT_SPEC)).slos if slo.name == "availability")
    line = 'slo_engine_http_requests_total{{endpoint="/v1/completions",code="{code}",model="m"}} {value}'

    def scrape(**values: float) -> dict:
        text = "# TYPE slo_engine_http_requests_total counter\n" + "\n".join(
            line.format(code=code.removeprefix("c"), value=value) for code, value in values.items()) + "\n"
        return samples_by_name(text)

    before = scrape(c200=900, c500=100)
    # Steady: 100 more served, 20 more failed.
    assert server_events(slo, before, scrape(c200=1000, c500=120)) == (20, 120)
    # Restarted between the scrapes: the counters began again at 0 and now read 45 and 5.
    assert server_events(slo, before, scrape(c200=45, c500=5)) == (5, 50)
    # A 503 series appears: its 7 are new events; a 400 is in neither selection.
    assert server_events(slo, before, scrape(c200=910, c500=100, c503=7, c400=3)) == (7, 17)

def ok(ttft: float, gap: float = 0.01, tokens: int = 9) -> RequestResult:
    return RequestResult(200, 0.0, ttft + gap * (tokens - 1), ttft, [gap] * (tokens - 1), tokens, 10)


def by_slo(criteria, view: str) -> dict:
    return {c.slo: c for c in criteria if c.view == view}


def test_client_view_judges_latency_and_errors_against_the_spec():
    fast = [ok(0.05) for _ in range(198)]
    summary, criteria = judge(SPEC, fast + [ok(0.6), ok(0.7)], 10.0, None, None)  # 1% over 0.5 s: TTFT holds 99%
    client = by_slo(criteria, "client")
    assert client["ttft"].passed and client["availability"].passed and verdict(criteria)
    assert summary.latency_s["ttft"]["p50"] == pytest.approx(0.05)
    assert summary.output_tokens_per_s == pytest.approx(200 * 9 / 10.0)

    _, criteria = judge(SPEC, fast + [ok(0.6), ok(0.7), ok(0.8)], 10.0, None, None)  # 1.5% over: fails
    assert by_slo(criteria, "client")["ttft"].passed is False and not verdict(criteria)

    slow_stream = [ok(0.05, gap=0.2) for _ in range(50)]  # goodput allows 0.1 s per later token
    _, criteria = judge(SPEC, slow_stream, 10.0, None, None)
    assert by_slo(criteria, "client")["goodput"].passed is False
    one_token = [ok(0.05, tokens=1) for _ in range(20)] + [ok(0.05) for _ in range(80)]
    _, criteria = judge(SPEC, one_token, 10.0, None, None)  # no later token: nothing to be late, as the engine counts
    assert by_slo(criteria, "client")["goodput"].measured.startswith("100.00% of 100")


def test_client_faults_are_not_the_services_but_429_and_broken_streams_are():
    results = [ok(0.05) for _ in range(999)] + [RequestResult(400, 0, 0.01, error="bad")]
    assert by_slo(judge(SPEC, results, 1.0, None, None)[1], "client")["availability"].passed
    for failure in (RequestResult(429, 0, 0.01, error="full"), RequestResult(200, 0, 0.5, 0.05, error="engine")):
        criteria = judge(SPEC, [ok(0.05) for _ in range(999)] + [failure, failure], 1.0, None, None)[1]
        assert by_slo(criteria, "client")["availability"].passed is False


def test_client_view_of_an_exact_latency_slo_counts_server_failures_as_missed():
    """As the engine's exact counters judge: a 5xx misses the TTFT target, a 429 or 400 is not judged."""
    fast = [ok(0.05) for _ in range(99)]
    client = by_slo(judge(SPEC, fast + [RequestResult(429, 0, 0.01, error="full")], 1.0, None, None)[1], "client")
    assert client["ttft"].passed and client["ttft"].measured.startswith("100.00% of 99")
    client = by_slo(judge(SPEC, fast + [RequestResult(500, 0, 0.01, error="engine")] * 2, 1.0, None, None)[1],
                    "client")
    assert client["ttft"].passed is False and client["ttft"].measured.startswith("98.02% of 101")  # 99 / 101


def exposition(total: float, errors: float) -> str:
    return ("# TYPE slo_engine_http_requests_total counter\n"
            f'slo_engine_http_requests_total{{endpoint="/v1/completions",code="200"}} {total - errors}\n'
            f'slo_engine_http_requests_total{{endpoint="/v1/completions",code="503"}} {errors}\n'
            f'slo_engine_http_requests_total{{endpoint="/health",code="503"}} 1000\n')


def test_server_view_uses_the_specs_selectors_on_counter_deltas():
    _, criteria = judge(SPEC, [], 1.0, exposition(100, 1), exposition(2100, 2))  # 1 error in 2000 new requests
    availability = by_slo(criteria, "server")["availability"]
    assert availability.passed and "99.95% of 2000" in availability.measured  # /health's 503s are not selected
    _, criteria = judge(SPEC, [], 1.0, exposition(100, 1), exposition(2100, 5))
    assert by_slo(criteria, "server")["availability"].passed is False


def test_nothing_judged_is_not_a_pass():
    _, criteria = judge(SPEC, [], 1.0, None, None)
    assert not verdict(criteria)


def gate(*args: str, report=None) -> subprocess.CompletedProcess:
    extra = ["--report", str(report)] if report else ["--report", ""]
    return subprocess.run([sys.executable, "-m", "slo_sidecar.app.cli", "validate", *args, *extra],
                          capture_output=True, text=True, timeout=300)


def set_faults(engine, **settings: float) -> None:
    state = engine.set_faults(**settings)
    assert {name: state[name] for name in settings} == settings


@pytest.mark.engine
def test_gate_passes_a_healthy_engine_and_writes_its_report(engine, tmp_path):
    report = tmp_path / "report.json"
    result = gate("--url", engine.url, "--api-key", API_KEY, "--requests", "24", "--concurrency", "3",
                  "--max-tokens", "8", "--prompt-tokens", "16", report=report)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.rstrip().endswith("PASS") and "time to 1st token" in result.stdout
    assert "validate: 100%" in result.stderr  # the progress lines (not a terminal here)
    data = json.loads(report.read_text())
    assert data["passed"] and data["summary"]["requests"] == 24 and data["summary"]["ok"] == 24
    assert data["summary"]["latency_s"]["ttft"]["p99"] > 0 and data["peak_memory"]["engine_rss_bytes"] > 10 * 2**20
    views = {(c["slo"], c["view"]) for c in data["criteria"]}
    assert {("availability", "server"), ("ttft", "client"), ("queue-time", "server"), ("goodput", "client")} <= views
    server = {c["slo"]: c for c in data["criteria"] if c["view"] == "server"}
    assert server["availability"]["measured"].endswith("of 24")  # the engine counted exactly our requests


@pytest.mark.engine
def test_gate_fails_when_the_engine_fails_requests(engine, tmp_path):
    set_faults(engine, error_ratio=0.25)
    try:
        result = gate("--url", engine.url, "--api-key", API_KEY, "--requests", "12", "--concurrency", "2",
                      "--max-tokens", "4", "--no-stream", "--quiet")
    finally:
        set_faults(engine, error_ratio=0.0)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "FAIL" and "failed: 500 x3" in lines[0]
    assert any(line.split()[:2] == ["availability", "server"] and "75.00% of 12" in line and "FAIL" in line
               for line in lines), result.stdout
    assert any(line.startswith("ttft") and "n/a" in line and "--stream" in line for line in lines)


@pytest.mark.engine
def test_gate_without_the_engines_metrics_judges_from_the_client_alone(engine):
    dead_metrics = f"http://127.0.0.1:{free_port()}/metrics"  # as with --metrics-port, and no way to reach it
    result = gate("--url", engine.url, "--api-key", API_KEY, "--requests", "6", "--max-tokens", "4",
                  "--metrics-url", dead_metrics, "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith(("availability", "ttft", "goodput"))]
    assert rows and all("  client  " in row for row in rows), rows
    assert "peak memory: not reported by the engine" in result.stdout


def test_gate_names_an_unreachable_engine_and_exits_2():
    result = gate("--url", f"http://127.0.0.1:{free_port()}", "--requests", "2")
    assert result.returncode == 2 and "cannot load" in result.stderr and "Traceback" not in result.stderr
    assert gate("--url", "http://127.0.0.1:1", "--requests", "0").returncode == 2


@pytest.mark.engine
def test_gate_judges_each_tenant_of_a_lora_engine_on_its_own(lora_engine, tmp_path):
    for model in ("medical", "legal"):  # each adapter loaded before the run: its cold start is not judged here
        body = json.dumps({"model": model, "prompt": "warm up", "max_tokens": 2}).encode()
        with urllib.request.urlopen(urllib.request.Request(lora_engine.url + "/v1/completions", data=body,
                                                           headers={"Content-Type": "application/json"}),
                                    timeout=120) as answer:
            assert answer.status == 200
    # 8 requests one at a time go medical medical legal medical, twice; every 4th fails: both of them medical's.
    set_faults(lora_engine, error_ratio=0.25)
    report = tmp_path / "report.json"
    try:
        result = gate("--url", lora_engine.url, "--model", "medical=3", "--model", "legal", "--requests", "8",
                      "--concurrency", "1", "--max-tokens", "4", "--prompt-tokens", "16", "--quiet", report=report)
    finally:
        set_faults(lora_engine, error_ratio=0.0)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    lines = result.stdout.splitlines()
    assert lines[-1] == "FAIL" and "medical: FAIL" in lines and "legal: PASS" in lines, output
    assert "over medical x3, legal x1" in result.stderr
    data = json.loads(report.read_text())
    assert not data["passed"]
    assert [(t["name"], t["passed"], t["summary"]["requests"], t["summary"]["ok"], t["summary"]["failed_by_status"])
            for t in data["tenants"]] == [("medical", False, 6, 4, {"500": 2}), ("legal", True, 2, 2, {})]
    rows = {(c["tenant"], c["slo"], c["view"]): c for c in data["criteria"]}
    assert rows["medical", "availability", "client"]["measured"].startswith("66.67% of 6")
    assert rows["medical", "availability", "client"]["passed"] is False
    assert rows["legal", "availability", "client"]["measured"].startswith("100.00% of 2")
    server = rows["medical", "availability", "server"], rows["legal", "availability", "server"]
    # The engine counts each tenant: exactly our requests, per tenant (an engine without the label:
    # tests/test_validate_models.py).
    assert server[0]["measured"] == "66.67% of 6" and server[0]["passed"] is False, output
    assert server[1]["measured"] == "100.00% of 2" and server[1]["passed"] is True, output
