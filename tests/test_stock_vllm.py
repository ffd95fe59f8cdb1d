"""The SLOs on an unmodified vLLM server: `--slo stock-vllm` reads only what stock vLLM exports.

vLLM's own OpenAI server runs with no plugin of ours (VLLM_PLUGINS=none: not even our stat logger, which
this environment installs) and a small admission limit (`--max-num-queued-reqs`), so a burst is partly
refused (503, which the availability SLI counts as errors). The sidecar, a real Prometheus with the
generated rules, the SLO dashboard's panels and the load-test gate all run against it. The expected
values are the test's own queries over the raw counters, not the rules'.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys

import aiohttp
import pytest

from slo_sidecar.dashboards.definitions import all_panel_queries
from slo_sidecar.engine.tiny_model import MODEL_NAME
from slo_sidecar.app.processes import PrometheusProcess, SidecarProcess, VllmServerProcess, http_get
from slo_sidecar.spec.load import BUILT_IN, load_spec, parse_spec
from tests.conftest import run_async
from tests.helpers import REPO, metric, parse_metrics, write_rule_files

pytestmark = [pytest.mark.engine,
              pytest.mark.skipif(shutil.which("prometheus") is None, reason="Prometheus (Debian package) not installed")]

# The built-in spec with a 7-day period, so that its shortest window is one minute and fills within the test.
SPEC_7D = BUILT_IN["stock-vllm"].read_text().replace("    objective:", "    period: 7d\n    objective:")
GENERATION = 'handler=~"/v1/completions|/v1/chat/completions|/v1/responses"'


def test_the_built_in_spec_is_found_by_name_and_reads_only_stock_series():
    spec = load_spec("stock-vllm")
    assert spec.source == str(BUILT_IN["stock-vllm"]) and spec.identity == ("namespace", "job")
    metrics = {selection.metric for slo in spec.slos for events in (slo.sli.errors, slo.sli.total) if events
               for _, selection in events.terms}
    ours = {name for name in metrics if name.startswith("slo_engine")}
    assert not ours, f"series stock vLLM does not have: {ours}"
    assert parse_spec(SPEC_7D, "stock-7d.yaml").slos[0].period == "7d"


def test_its_rules_pass_promtool(tmp_path):
    files = write_rule_files(load_spec("stock-vllm"), tmp_path)
    assert len(files) == 4
    result = subprocess.run(["promtool", "check", "rules", *map(str, files)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def rule_and_own_ratio(prometheus: PrometheusProcess, slo: str, errors: str, total: str) -> tuple[float, float]:
    """The generated rules' 1m error ratio for slo, and the test's own from the raw counters, evaluated at the
    same instant: the rule's last evaluation. (Queried at two instants, a 1m window sliding over a burst that
    just ended moves the ratio by more than the comparison's tolerance.)"""
    recorded = prometheus.query(f'slo:sli_error:ratio_rate1m{{sloth_slo="{slo}"}}[10s]')  # raw samples
    assert recorded, f"no 1m ratio recorded for {slo}"
    at, value = recorded[0]["values"][-1]
    own = prometheus.query(f"({errors}) / ({total})", at=float(at))
    assert own, f"the test's own ratio for {slo} has no data at {at}"
    return float(value), float(own[0]["value"][1])


@run_async
async def test_sidecar_rules_and_dashboards_on_stock_vllm(stock_vllm, tmp_path):
    spec_file = tmp_path / "stock-7d.yaml"
    spec_file.write_text(SPEC_7D)
    spec = load_spec(str(spec_file))
    rules = write_rule_files(spec, tmp_path)
    with SidecarProcess(tmp_path / "sidecar.log", stock_vllm.url, "--engine-interval-s", "1", "--slo",
                        str(spec_file), "--probe-interval-s", "2").start() as sidecar:
        sidecar.wait_ready()
        # One job for the pod's two containers, in a namespace, as a PodMonitor scrapes them.
        scrape = [{"job_name": "llm", "static_configs": [{
            "targets": [stock_vllm.url.removeprefix("http://"), sidecar.url.removeprefix("http://")],
            "labels": {"namespace": "inference"}}]}]
        with PrometheusProcess(tmp_path, {}, rules, scrape_configs=scrape).start() as prometheus:
            prometheus.wait_ready()
            rejected_before = metric(parse_metrics(http_get(stock_vllm.url + "/metrics")[1].decode()),
                                     "vllm:admission_rejections_total")
            probes_before, served_before = await asyncio.to_thread(probes_and_served, stock_vllm, sidecar)
            await asyncio.sleep(10)  # idle: only the sidecar's probes reach vLLM
            probes_after, served_after = await asyncio.to_thread(probes_and_served, stock_vllm, sidecar)
            refused = await load(stock_vllm, seconds=25)  # the 1m ratios need samples, not a full window
            errors = f'sum(increase(http_requests_total{{{GENERATION},status="5xx"}}[1m]))'
            total = f'sum(increase(http_requests_total{{{GENERATION},status=~"2xx|5xx"}}[1m]))'
            rejections = metric(parse_metrics(http_get(stock_vllm.url + "/metrics")[1].decode()),
                                "vllm:admission_rejections_total")
            slow = ("1 - sum(increase(vllm:time_to_first_token_seconds_bucket{le=\"0.5\"}[1m])) / "
                    "sum(increase(vllm:time_to_first_token_seconds_count[1m]))")
            # Once the burst is over, scrapes are quick again: none taken before the rule's next evaluation
            # is still being ingested after it, so the rule and the test's query see the same samples.
            await asyncio.sleep(3)
            availability = await asyncio.to_thread(rule_and_own_ratio, prometheus, "availability", errors, total)
            ttft = await asyncio.to_thread(rule_and_own_ratio, prometheus, "ttft", slow, "1")
            sidecar_samples = parse_metrics(http_get(sidecar.url + "/metrics")[1].decode())
            rejections = metric(parse_metrics(http_get(stock_vllm.url + "/metrics")[1].decode()),
                                "vllm:admission_rejections_total")
            panels = await asyncio.to_thread(slo_panels_without_data, prometheus, spec)
    # Stock vLLM counts the probes as traffic (the spec says so): every probe answered is a 2xx it served.
    probes = probes_after - probes_before
    assert probes >= 3 and served_after - served_before == probes, (probes, served_after - served_before)
    assert refused > 0, "the burst met vLLM's admission limit"
    # Each refusal is vLLM's admission's: the test's, and the probes' that met a full queue, which the sidecar
    # counts as errors vLLM served (not as an engine that did not answer: nothing is added as lost).
    probes_refused = metric(sidecar_samples, "slo_probe_requests_total", result="error")
    assert rejections - rejected_before == refused + probes_refused, (rejections, rejected_before, refused,
                                                                      probes_refused)
    assert metric(sidecar_samples, "slo_probe_requests_total", result="unanswered") == 0
    ours, theirs = availability
    assert theirs > 0, "503 refusals are availability errors"
    assert ours == pytest.approx(theirs, rel=0.01), availability
    assert ttft[0] == pytest.approx(ttft[1], abs=1e-9, rel=0.01), ttft
    sidecar_ratio = metric(sidecar_samples, "slo_sli_error_ratio", slo="availability", window="1m")
    assert sidecar_ratio == pytest.approx(theirs, rel=0.2, abs=0.005), (sidecar_ratio, theirs)
    assert not panels, f"SLO dashboard panels without data on stock vLLM: {panels}"


def probes_and_served(server: VllmServerProcess, sidecar: SidecarProcess) -> tuple[float, float]:
    """(probes the sidecar got an answer to, generation requests vLLM served with a 2xx)."""
    ours = parse_metrics(http_get(sidecar.url + "/metrics")[1].decode())
    theirs = parse_metrics(http_get(server.url + "/metrics")[1].decode())
    return (metric(ours, "slo_probe_requests_total", result="success"),
            metric(theirs, "http_requests_total", handler="/v1/completions", status="2xx"))


async def load(server: VllmServerProcess, seconds: float) -> int:
    """Bursts of 8 requests at once against vLLM's limit of 3 unfinished (conftest.STOCK_QUEUED_LIMIT): some
    served, some refused (503)."""
    refused = 0
    body = {"model": MODEL_NAME, "prompt": "stock", "max_tokens": 32, "ignore_eos": True}
    deadline = asyncio.get_running_loop().time() + seconds
    async with aiohttp.ClientSession() as session:
        async def one() -> int:
            async with session.post(server.url + "/v1/completions", json=body) as response:
                await response.read()
                return response.status
        while asyncio.get_running_loop().time() < deadline:
            statuses = await asyncio.gather(*(one() for _ in range(8)))
            assert set(statuses) <= {200, 503}, statuses
            refused += statuses.count(503)
            await asyncio.sleep(0.2)
    return refused


def slo_panels_without_data(prometheus: PrometheusProcess, spec) -> list[str]:
    """The SLO dashboard's panels (as Grafana queries them, variables on All) that return nothing."""
    missing = []
    for query in all_panel_queries(spec):
        if query.dashboard.endswith("/ SLOs") and not prometheus.query(query.expr):
            missing.append(f"{query.panel}: {query.expr}")
    return missing


def test_the_gate_judges_stock_vllm_from_its_own_series(stock_vllm, tmp_path):
    report = tmp_path / "report.json"
    result = subprocess.run([sys.executable, "-m", "slo_sidecar.app.cli", "validate", "--slo", "stock-vllm", "--url",
                             stock_vllm.url, "--requests", "12", "--concurrency", "1", "--max-tokens", "8",
                             "--report", str(report), "--quiet"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    criteria = json.loads(report.read_text())["criteria"]
    server = {c["slo"] for c in criteria if c["view"] == "server" and c["passed"] is not None}
    assert {"availability", "ttft", "e2e-latency", "queue-time"} <= server, criteria
