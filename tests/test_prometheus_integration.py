"""A real Prometheus scrapes the real engine and sidecar, loads the generated rules, and agrees with the sidecar.

The SLOs here use a 7-day period, so their shortest window is one minute and
fills within the test; the rules and the sidecar read the same spec file.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics

import aiohttp
import pytest

from slo_sidecar.dashboards.definitions import all_panel_queries
from slo_sidecar.app.processes import PrometheusProcess, SidecarProcess, http_get
from slo_sidecar.spec.load import load_spec
from tests.conftest import API_KEY, run_async
from tests.helpers import parse_metrics, write_rule_files
from tests.test_deploy import adapter_rules, adapter_series, render_adapter_query

pytestmark = [pytest.mark.engine,
              pytest.mark.skipif(shutil.which("prometheus") is None, reason="Prometheus (Debian package) not installed")]

SPEC = """version: slo-sidecar/v1
service: it
slos:
  - name: availability
    objective: 99
    period: 7d
    sli:
      availability:
        errors:
          metric: slo_engine_http_requests_total
          matchers: ['endpoint=~"/v1/completions|/v1/chat/completions"', 'code=~"5..|429"']
        total:
          metric: slo_engine_http_requests_total
          matchers: ['endpoint=~"/v1/completions|/v1/chat/completions"', 'code=~"2..|5..|429"']
  - name: ttft
    objective: 99
    period: 7d
    sli:
      latency: {measure: ttft, threshold_s: 0.3}
  - name: ttft-histogram
    objective: 99
    period: 7d
    sli:
      latency: {histogram: "vllm:time_to_first_token_seconds", threshold_s: 0.5}
"""
SLOS = ("availability", "ttft", "ttft-histogram")
FAILING = 0.2


def sidecar_ratios(sidecar: SidecarProcess) -> dict[tuple[str, str], float]:
    samples = parse_metrics(http_get(sidecar.url + "/metrics")[1].decode())
    filled = {dict(labels)["window"] for (name, labels), value in samples.items()
              if name == "slo_window_filled" and value == 1}
    return {(dict(labels)["slo"], dict(labels)["window"]): value for (name, labels), value in samples.items()
            if name == "slo_sli_error_ratio" and dict(labels)["window"] in filled}


def run_every_panel_query(prometheus: PrometheusProcess, spec) -> dict[str, str]:
    """Every query of every generated panel, as Grafana would send it with variables on All: "data", or why not."""
    outcomes: dict[str, list[str]] = {}
    for query in all_panel_queries(spec):
        try:
            outcome = "data" if prometheus.query(query.expr) else f"no data: {query.expr}"
        except RuntimeError as exc:
            outcome = f"error: {exc}"
        outcomes.setdefault(f"{query.dashboard} / {query.panel}", []).append(outcome)
    return {panel: next((o for o in found if o != "data"), "data") for panel, found in outcomes.items()}


def healthy_everywhere(prometheus: PrometheusProcess, sidecar: SidecarProcess) -> dict[str, object]:
    """What a healthy service with no failures must read: burn 0 and the whole budget, no "No data"."""
    burn = {r["metric"]["sloth_slo"]: float(r["value"][1]) for r in prometheus.query("slo:current_burn_rate:ratio")}
    budget = {r["metric"]["sloth_slo"]: float(r["value"][1])
              for r in prometheus.query("slo:period_error_budget_remaining:ratio")}
    samples = parse_metrics(http_get(sidecar.url + "/metrics")[1].decode())
    objectives = {dict(labels)["slo"]: value for (name, labels), value in samples.items()
                  if name == "slo_objective_ratio"}
    sidecar_burn = {dict(labels)["slo"]: value / (1 - objectives[dict(labels)["slo"]])
                    for (name, labels), value in samples.items()
                    if name == "slo_sli_error_ratio" and dict(labels)["window"] == "1m"}
    sidecar_budget = {dict(labels)["slo"]: value for (name, labels), value in samples.items()
                      if name == "slo_error_budget_remaining_ratio"}
    return {"burn": burn, "budget": budget, "sidecar burn": sidecar_burn, "sidecar budget": sidecar_budget}


def through_the_adapter(prometheus: PrometheusProcess, sidecar: SidecarProcess) -> dict[str, tuple[float, float]]:
    """Each custom metric of the prometheus-adapter rules, as the HPA would get it for the sidecar's pod (the
    rule's metricsQuery, rendered, against this Prometheus: `instance` stands for `pod` here), beside the
    sidecar's own value of the series it reads."""
    samples = parse_metrics(http_get(sidecar.url + "/metrics")[1].decode())
    found = {}
    for name, rule in adapter_rules().items():
        series = adapter_series(rule)
        query = render_adapter_query(rule["metricsQuery"], series, 'job="sidecar"', "instance")
        result = prometheus.query(query)
        own = [value for (sample, _), value in samples.items() if sample == series]
        found[name] = (float(result[0]["value"][1]) if result else None, own[0] if own else None)
    return found


def prometheus_ratio(prometheus: PrometheusProcess, slo: str, window: str) -> float | None:
    result = prometheus.query(f'slo:sli_error:ratio_rate{window}{{sloth_slo="{slo}"}}')
    return float(result[0]["value"][1]) if result else None


@run_async
async def test_sidecar_burn_rates_agree_with_prometheus_rules(engine, tmp_path):
    spec_file = tmp_path / "slo.yaml"
    spec_file.write_text(SPEC)
    rules = write_rule_files(load_spec(str(spec_file)), tmp_path)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    capacity = tmp_path / "capacity.json"  # as `slo-sidecar capacity --json` writes it, but its figure alone
    capacity.write_text('{"version": "slo-sidecar/capacity/v1", "capacity_rps": 1000.0, "steps": []}')
    # One fake GPU and a price, so the GPU and cost panels have data to show too.
    with SidecarProcess(tmp_path / "sidecar.log", engine.url, "--engine-interval-s", "1", "--slo", str(spec_file),
                        "--fake-gpu", "1", "--engine-pid", str(engine.process.pid), "--gpu-interval-s", "1",
                        "--gpu-hourly-usd", "4", "--capacity", str(capacity)).start() as sidecar:
        sidecar.wait_ready()
        targets = {"engine": engine.url.removeprefix("http://"), "sidecar": sidecar.url.removeprefix("http://")}
        with PrometheusProcess(tmp_path, targets, rules).start() as prometheus:
            prometheus.wait_ready()
            # A healthy service before any failure: burn 0 and budget 100% for every SLO, in the
            # rules and in the sidecar, within a few scrapes (two samples for rate(), one evaluation).
            zero, whole = {slo: 0.0 for slo in SLOS}, {slo: 1.0 for slo in SLOS}
            wanted = {"burn": zero, "budget": whole, "sidecar burn": zero, "sidecar budget": whole}
            for _ in range(60):
                healthy = await asyncio.to_thread(healthy_everywhere, prometheus, sidecar)
                if healthy == wanted:
                    break
                await asyncio.sleep(0.5)
            assert healthy == wanted, healthy
            async with aiohttp.ClientSession(headers=headers) as session:
                await asyncio.to_thread(engine.set_faults, error_ratio=FAILING)
                stop = asyncio.Event()

                async def client() -> None:  # three at a time: below the engine's 4 slots, so no 429s
                    while not stop.is_set():
                        async with session.post(engine.url + "/v1/completions",
                                                json={"prompt": "slo", "max_tokens": 4}) as response:
                            await response.read()

                clients = [asyncio.create_task(client()) for _ in range(3)]
                try:
                    await asyncio.sleep(75)  # the 1m window fills in both, with a margin
                    comparisons = []
                    panel_results = await asyncio.to_thread(run_every_panel_query, prometheus,
                                                            load_spec(str(spec_file)))
                    adapter = await asyncio.to_thread(through_the_adapter, prometheus, sidecar)
                    utilisation = await asyncio.to_thread(prometheus.query, "slo_capacity_utilisation_ratio")
                    for _ in range(5):
                        ours = await asyncio.to_thread(sidecar_ratios, sidecar)
                        theirs = {key: await asyncio.to_thread(prometheus_ratio, prometheus, *key) for key in ours}
                        comparisons.append((ours, theirs))
                        await asyncio.sleep(2)
                finally:
                    stop.set()
                    await asyncio.gather(*clients, return_exceptions=True)
                    await asyncio.to_thread(engine.set_faults, error_ratio=0.0)
            up = prometheus.query('up{job="sidecar"}')
            assert up and up[0]["value"][1] == "1"
    # The HPA's metrics through the adapter's rules: the sidecar's headroom (a busy pod: above 0) and queue
    # depth, as the sidecar serves them (Prometheus holds a scrape at most a second old: within 20%).
    assert set(adapter) == {"slo_headroom", "sidecar_engine_queue_depth"}, adapter
    through, own = adapter["slo_headroom"]
    assert through is not None and own is not None and through > 0, adapter
    assert through == pytest.approx(own, rel=0.2), adapter
    assert adapter["sidecar_engine_queue_depth"][0] is not None, adapter
    # Three clients at a time of 4-token requests finish tens a second (70 here): a share of 1000 req/s.
    assert utilisation and 0 < float(utilisation[0]["value"][1]) < 1, utilisation
    failed = {title: outcome for title, outcome in panel_results.items() if outcome != "data"}
    assert not failed, f"dashboard panels without data or with errors after the load: {failed}"
    assert len(panel_results) >= 30
    keys = set(comparisons[0][0])
    assert {(slo, "1m") for slo in SLOS} <= keys, keys
    for key in keys:
        ours = [c[0][key] for c in comparisons]
        theirs = [c[1][key] for c in comparisons]
        assert None not in theirs, f"Prometheus has no {key}"
        difference = statistics.median(abs(a - b) for a, b in zip(ours, theirs))
        # Within 2% of the value (and 0.001 absolute where both are near zero).
        assert difference <= max(0.02 * statistics.median(theirs), 0.001), (key, ours, theirs)
    availability = statistics.median(c[0][("availability", "1m")] for c in comparisons)
    assert availability == pytest.approx(FAILING, abs=0.02), "the injected share of failures"
