"""Generated Grafana dashboards: committed and fresh, current schema, thresholds taken from the spec."""

from __future__ import annotations

import json
import re

from dashboards.definitions import dashboards
from dashboards.grafana import render
from dashboards.model import expand
from slo_spec.load import DEFAULT_SPEC, load_spec
from tests.helpers import REPO

COMMITTED = REPO / "dashboards" / "generated"
SPEC = load_spec(str(DEFAULT_SPEC))


def boards() -> dict[str, dict]:
    return {name: json.loads(text) for name, text in render(dashboards(SPEC)).items()}


def panels(board: dict) -> list[dict]:
    return [panel for panel in board["panels"] if panel["type"] != "row"]


def test_exemplars_where_traces_are_and_linked_to_jaeger():
    import yaml

    from dashboards.grafana import EXEMPLAR_TRACE_LABEL, datasources

    with_exemplars = [panel["title"] for board in boards().values() for panel in panels(board)
                      if any(target.get("exemplar") for target in panel["targets"])]
    assert with_exemplars == ["Request duration, with traces"]  # vLLM's own histograms carry none
    traced = by_title("Request duration, with traces")
    assert all("slo_engine_http_request_duration_seconds_bucket" in t["expr"] for t in traced["targets"])
    committed = COMMITTED / "provisioning" / "datasources.yaml"
    assert committed.read_text() == datasources()
    prometheus, jaeger = yaml.safe_load(committed.read_text())["datasources"]
    link = prometheus["jsonData"]["exemplarTraceIdDestinations"][0]
    assert link == {"name": EXEMPLAR_TRACE_LABEL, "datasourceUid": jaeger["uid"], "urlDisplayLabel": "Trace in Jaeger"}
    assert jaeger["type"] == "jaeger"


def test_current_schema_stable_uids_variables_and_links():
    generated = boards()
    assert sorted(board["uid"] for board in generated.values()) == sorted(
        f"slo-sidecar-llm-inference-{name}" for name in ("slo", "engine", "gpu", "cost"))
    for board in generated.values():
        assert board["schemaVersion"] == 41
        names = [variable["name"] for variable in board["templating"]["list"]]
        assert names == ["datasource", "namespace", "pod", "model"]
        assert len(board["links"]) == 3 and all(link["url"].startswith("/d/") for link in board["links"])
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids))
        for panel in panels(board):
            assert panel["description"] and panel["fieldConfig"]["defaults"]["unit"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}"
                assert "$" not in expand(target["expr"]), target["expr"]


def by_title(title: str) -> dict:
    return next(panel for board in boards().values() for panel in panels(board) if panel["title"] == title)


def threshold_values(panel: dict) -> list[float]:
    return [step["value"] for step in panel["fieldConfig"]["defaults"]["thresholds"]["steps"][1:]]


def test_thresholds_come_from_the_spec():
    op = SPEC.operational
    assert threshold_values(by_title("KV cache usage")) == [op.kv_cache_high_ratio]
    assert threshold_values(by_title("Queue fill")) == [op.queue_full_ratio_alert]
    assert threshold_values(by_title("Memory used share")) == [], "no alert on vLLM's deliberate pre-allocation"
    ttft_slo = next(slo for slo in SPEC.slos if slo.name == "ttft")
    assert threshold_values(by_title("Time to first token")) == sorted([ttft_slo.sli.threshold_s,
                                                                         op.latency_p99_alert_s])
    assert threshold_values(by_title("Burn rate by window")) == [1.0, 3.0, 6.0, 14.4]


def test_latency_percentiles_are_quantiles_of_summed_rates():
    for title in ("Time to first token", "Inter-token latency", "End-to-end latency", "Queue time"):
        panel = by_title(title)
        for target in panel["targets"]:
            assert re.fullmatch(r"histogram_quantile\(0\.\d+, sum by \(le\) \(rate\(vllm:\w+_bucket\{.*\}"
                                r"\[\$__rate_interval\]\)\)\)", target["expr"]), target["expr"]
