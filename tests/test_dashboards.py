"""Generated Grafana dashboards: committed and fresh, current schema, thresholds taken from the spec,
queries on series that exist, tenants picked only where a series has a tenant."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from functools import cache

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from slo_sidecar.dashboards.definitions import FLEET_ROW, RELEASES_ROW, all_panel_queries, dashboards, slo_overview
from slo_sidecar.dashboards.grafana import render
from slo_sidecar.dashboards.model import Dashboard, expand
from slo_sidecar.spec.load import DEFAULT_SPEC, load_spec
from slo_sidecar.spec.model import Matcher, Spec
from tests.helpers import REPO, VLLM_EXPOSITION

COMMITTED = REPO / "generated" / "dashboards"
SPEC = load_spec(str(DEFAULT_SPEC))
TENANTS = ("medical", "other")  # "other": the slice of every tenant the spec does not name


def sliced_spec(names: tuple[str, ...] = ("ttft", "goodput")) -> Spec:
    """The default spec with `names` sliced by tenant, as the spec's `slice_by: [model]` expands them."""
    slos = []
    for slo in SPEC.slos:
        slices = [{"model": tenant} for tenant in TENANTS] if slo.name in names else [{}]
        slos += [dataclasses.replace(slo, slice=piece) for piece in slices]
    return dataclasses.replace(SPEC, slos=tuple(slos))


SLICED = sliced_spec()
# ttft over 7 days: its page window is 14m where the others' is 1h.
MIXED_PERIODS = dataclasses.replace(SPEC, slos=tuple(dataclasses.replace(slo, period="7d") if slo.name == "ttft"
                                                     else slo for slo in SPEC.slos))


def boards(spec: Spec = SPEC) -> dict[str, dict]:
    return {name: json.loads(text) for name, text in render(dashboards(spec)).items()}


def panels(board: dict) -> list[dict]:
    return [panel for panel in board["panels"] if panel["type"] != "row"]


def test_exemplars_where_traces_are_and_linked_to_jaeger():
    import yaml

    from slo_sidecar.dashboards.grafana import EXEMPLAR_TRACE_LABEL, datasources

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
        tenants = ["model"] if board["uid"].endswith(("-slo", "-engine")) else []
        assert names == ["datasource", "namespace", "pod", "model_name", *tenants]
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
    for title in ("Time to first token", "Inter-token latency", "End-to-end latency", "Queue time", "Prefill time",
                  "Decode time", "Prompt length", "Generation length", "Max generation tokens"):
        panel = by_title(title)
        for target in panel["targets"]:
            assert re.fullmatch(r"histogram_quantile\(0\.\d+, sum by \(le\) \(rate\(vllm:\w+_bucket\{.*\}"
                                r"\[\$__rate_interval\]\)\)\)", target["expr"]), target["expr"]


# --- the series every query reads -------------------------------------------------------------------

SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^{}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
# What the sidecar serves per tenant (issue 16), all labelled `model` (sidecar/cost.py, TENANT_LABEL).
SIDECAR_TENANT_SERIES = ("sidecar_tenant_cost_usd_per_hour", "sidecar_tenant_cost_usd_per_million_tokens")
SERVICE_LABELS = {"namespace", "pod", "job", "instance"}  # target labels Prometheus adds to every scraped series


def selectors(expr: str) -> list[tuple[str, list[Matcher]]]:
    """Every `metric{matchers}` of a query, its matchers as the spec's Matcher (which matches as Prometheus does)."""
    return [(metric, [Matcher(label, op, value) for label, op, value in MATCHER.findall(body)])
            for metric, body in SELECTOR.findall(expr)]


@cache
def vllm_series() -> dict[str, frozenset[str]]:
    """{sample name: label names} of a real vLLM's /metrics (the fixture)."""
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(VLLM_EXPOSITION.read_text()):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels | SERVICE_LABELS) for name, labels in series.items()}


@cache
def engine_series() -> dict[str, frozenset[str]]:
    """{sample name: label names} of the engine's own series, from its real metric objects (every one also
    carries `model_name`, added at exposition: slo_sidecar.engine.metrics.ConstantLabels)."""
    from slo_sidecar.engine.metrics import ServerMetrics
    from slo_sidecar.engine.slo_judge import SloJudge

    registry = CollectorRegistry()
    ServerMetrics(registry)
    SloJudge(SPEC, registry)
    return {name: frozenset({*collector._labelnames, "model_name", *SERVICE_LABELS})
            for name, collector in registry._names_to_collectors.items()}


@cache
def recorded_names() -> frozenset[str]:
    """The recordings the rule generator writes for the default spec."""
    from slo_sidecar.alerts.render import render as render_rules

    return frozenset(rule["record"] for name, text in render_rules(SPEC).items() if name.endswith(".rules.yaml")
                     for group in yaml.safe_load(text)["groups"] for rule in group["rules"] if "record" in rule)


def series_labels(spec: Spec, metric: str, matchers: list[Matcher]) -> frozenset[str] | None:
    """The labels the series a selector reads carry; None for a series nobody serves.

    SLO recordings carry the sloth labels and the identity, and a sliced SLO's also its slice (`model`,
    issue 16); firing alerts may lack `model` (an absent() alert has only its rule's labels)."""
    if metric.startswith("vllm:"):
        return vllm_series().get(metric)
    if metric.startswith("slo_engine_"):
        return engine_series().get(metric)
    if metric in SIDECAR_TENANT_SERIES:
        return frozenset({"model", *SERVICE_LABELS})
    if metric in recorded_names() or metric == "ALERTS":
        picked = [slo for slo in spec.slos
                  if all(m.matches({"sloth_slo": slo.name}) for m in matchers if m.label == "sloth_slo")]
        sliced = metric != "ALERTS" and bool(picked) and all("model" in slo.slice for slo in picked)
        return frozenset({"sloth_id", "sloth_service", "sloth_slo", *spec.identity, *(("model",) if sliced else ())})
    return None


def every_selector(spec: Spec) -> list[tuple[Dashboard, str, str, list[Matcher]]]:
    return [(board, panel.title, metric, matchers) for board in dashboards(spec) for panel in board.panels()
            for query in panel.queries for metric, matchers in selectors(query.expr)]


@pytest.mark.parametrize("spec", [SPEC, SLICED], ids=["default", "sliced"])
def test_engine_slo_and_tenant_series_read_exist(spec: Spec):
    """vLLM's against a real vLLM's /metrics, the engine's against its metric objects, the recordings
    against the rule generator's, the sidecar's tenant costs against its source."""
    sidecar_source = "".join(path.read_text() for path in (REPO / "sidecar").glob("*.py"))
    checked = set()
    for _, title, metric, matchers in every_selector(spec):
        if metric.startswith(("vllm:", "slo_engine_", "slo:", "sidecar_tenant_")):
            assert series_labels(spec, metric, matchers) is not None, f"{title}: nobody serves {metric}"
            checked.add(metric)
        if metric.startswith("sidecar_tenant_"):
            assert f'"{metric}"' in sidecar_source, metric
    for wanted in ("vllm:request_prefill_time_seconds_bucket", "vllm:request_decode_time_seconds_bucket",
                   "vllm:request_prompt_tokens_bucket", "vllm:request_generation_tokens_bucket",
                   "vllm:request_max_num_generation_tokens_bucket", "vllm:request_success_total",
                   "slo_engine_lora_cold_starts_total", "slo_engine_prompt_tokens_total",
                   "slo_engine_generation_tokens_total", "slo_engine_goodput_tokens_total"):
        assert wanted in checked, wanted


def test_finish_reasons_by_vllms_label():
    (query,) = by_title("Finish reasons")["targets"]
    assert query["expr"].startswith("sum by (finished_reason) (rate(vllm:request_success_total{")
    assert "finished_reason" in vllm_series()["vllm:request_success_total"]


@pytest.mark.parametrize("spec", [SPEC, SLICED], ids=["default", "sliced"])
def test_tenant_matcher_only_where_the_series_has_a_tenant(spec: Spec):
    """A matcher on `model` reads a missing label as "": on a series without it, picking a tenant would
    empty the panel. So a tenant matcher is on series with `model` only, or also matches "" there; and
    every series with `model` is filtered by the tenants picked, on a dashboard that offers `$model`."""
    for board, title, metric, matchers in every_selector(spec):
        labels = series_labels(spec, metric, matchers)
        tenant = [m for m in matchers if m.label == "model"]
        for matcher in tenant:
            assert labels is not None, f"{title}: {metric} filtered by tenant, but nobody serves it"
            picked = Matcher(matcher.label, matcher.op, expand(matcher.value, values={"model": "medical"}))
            assert "model" in labels or picked.matches({}), f"{title}: {metric} has no `model` to filter by"
        if labels is not None and "model" in labels:
            assert [m.value for m in tenant] == ["$model"], f"{title}: {metric} is not filtered by tenant"
            assert "model" in board.variables, f"{board.title} reads {metric} but offers no $model"


@pytest.mark.parametrize("spec", [SPEC, SLICED], ids=["default", "sliced"])
def test_picking_a_tenant_keeps_unsliced_slos_and_that_tenants_slices(spec: Spec):
    """Each SLO row's recordings, with $model on "medical": an unsliced SLO's series (no `model`) still
    match; of a sliced SLO's, medical's and no other tenant's."""
    board = slo_overview(spec)
    for slo in spec.slos:
        series = {"sloth_service": spec.service, "sloth_slo": slo.name, "sloth_id": f"{spec.service}-{slo.key}",
                  "namespace": "ns", "model_name": "base", **slo.slice}
        (panels,) = [panels for title, panels in board.rows if title.startswith(f"{slo.name}: ")]
        for panel in panels:
            for query in panel.queries:
                for metric, matchers in selectors(expand(query.expr, values={"model": "medical"})):
                    if metric.startswith("slo:sli_error:") or metric in ("slo:current_burn_rate:ratio",
                                                                          "slo:period_error_budget_remaining:ratio"):
                        shown = all(m.matches(series) for m in matchers)
                        assert shown == (slo.slice.get("model", "medical") == "medical"), (slo.key, query.expr)


# --- variables and the tenant table ---------------------------------------------------------------

def variable(board: dict, name: str) -> dict:
    return next(v for v in board["templating"]["list"] if v["name"] == name)


@pytest.mark.parametrize("spec", [SPEC, SLICED], ids=["default", "sliced"])
def test_tenant_variable_on_every_engine_and_slo_dashboard(spec: Spec):
    generated = boards(spec)
    for kind in ("slo", "engine"):
        board = generated[f"slo-sidecar-{spec.service}-{kind}.json"]
        tenant, service = variable(board, "model"), variable(board, "model_name")
        assert (tenant["label"], tenant["multi"], tenant["includeAll"], tenant["allValue"]) == ("Tenant", True, True,
                                                                                                ".*")
        assert re.fullmatch(r"label_values\(slo_engine_http_requests_total(\{.*\})?, model\)", tenant["query"])
        assert service["label"] == "Service model"
        assert service["query"] == "label_values(vllm:num_requests_running, model_name)"
    for board in dashboards(spec):  # and a dashboard asks only for the variables it offers
        used = {name for panel in board.panels() for query in panel.queries
                for name in re.findall(r"\$(\w+)", query.expr) if not name.startswith("__")}
        assert used <= set(board.variables), (board.title, used)


def test_expand_reads_whole_variable_names():
    assert expand('{model_name=~"$model_name", model=~"$model|"}', values={"model": "medical"}) == \
        '{model_name=~".*", model=~"medical|"}'


def tenant_tables(spec: Spec) -> list[dict]:
    board = boards(spec)[f"slo-sidecar-{spec.service}-slo.json"]
    return [panel for panel in panels(board) if panel["type"] == "table" and panel["title"] == "SLOs by tenant"]


def test_tenant_table_only_for_a_spec_with_sliced_slos():
    assert tenant_tables(SPEC) == []
    assert [title for title, _ in slo_overview(SPEC).rows if title == "Tenants"] == []
    # (the embedded spec's error-budget policy gives the Releases row)
    assert [title for title, _ in slo_overview(SLICED).rows][:3] == [FLEET_ROW, RELEASES_ROW, "Tenants"]
    assert len(tenant_tables(SLICED)) == 1
    # The rows per SLO: one per name, a sliced SLO's tenants together in it (alerts link rows by name).
    assert len(slo_overview(SLICED).rows) == 3 + len({slo.name for slo in SLICED.slos})


def test_tenant_table_one_row_per_slo_and_tenant_worst_first():
    (table,) = tenant_tables(SLICED)
    targets = table["targets"]
    assert all(t["instant"] and t["format"] == "table" for t in targets)
    organize = next(t["options"] for t in table["transformations"] if t["id"] == "organize")
    assert [t["id"] for t in table["transformations"]] == ["merge", "organize"]
    columns = sorted(organize["indexByName"], key=organize["indexByName"].get)
    assert [organize["renameByName"][c] for c in columns] == [
        "SLO", "Tenant", "Objective", "SLI over the period", "Budget left", "Burn now", "Goodput", "Cost per 1M tokens"]
    assert table["options"]["sortBy"] == [{"displayName": "Budget left", "desc": False}]
    # Grafana's merge makes one row of equal label sets: every query is one series per (SLO, tenant).
    for target in targets:
        assert re.match(r"(1 - )?(max|min) by \(sloth_slo, model\) \(slo:", target["expr"]), target["expr"]
    units = {o["matcher"]["options"]: o["properties"][0]["value"] for o in table["fieldConfig"]["overrides"]}
    assert units == {"Burn now": "short", "Cost per 1M tokens": "currencyUSD"}
    assert table["fieldConfig"]["defaults"]["unit"] == "percentunit"
    assert 'slo_engine_slo_requests_total{slo="goodput", good="true"' in targets[4]["expr"]


def test_tenant_table_without_a_goodput_slo_has_no_goodput_column():
    spec = dataclasses.replace(SLICED, slos=tuple(slo for slo in SLICED.slos if slo.sli.kind != "goodput"))
    (table,) = tenant_tables(spec)
    assert "Goodput" not in next(t["options"] for t in table["transformations"]
                                 if t["id"] == "organize")["renameByName"].values()


needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool (Debian package prometheus) not installed")


# --- the fleet table ------------------------------------------------------------------------------------

def fleet_table(spec: Spec) -> dict:
    """The SLO dashboard's first panel, checked to be the only one of its first row."""
    board = boards(spec)[f"slo-sidecar-{spec.service}-slo.json"]
    row, table, after = board["panels"][:3]
    assert (row["type"], row["title"], after["type"]) == ("row", FLEET_ROW, "row")
    return table


def columns(table: dict) -> dict[str, str]:
    """{field name: column title}, in the table's column order."""
    organize = next(t["options"] for t in table["transformations"] if t["id"] == "organize")
    order = sorted(organize["indexByName"], key=organize["indexByName"].get)
    return {name: organize["renameByName"][name] for name in order}


def fleet_labels(spec: Spec) -> list[str]:
    return ["namespace", "model_name", "sloth_slo", *(["model"] if any(slo.slice for slo in spec.slos) else [])]


@pytest.mark.parametrize("spec", [SPEC, SLICED], ids=["default", "sliced"])
def test_first_row_is_the_fleet_table_of_recordings_whatever_the_variables(spec: Spec):
    """One row per (namespace, model_name, SLO[, tenant]) of every service, from the SLO recordings alone
    (a few series per service, whatever the pod count), each query aggregated to one series per row."""
    table = fleet_table(spec)
    assert table["type"] == "table" and table["gridPos"]["w"] == 24
    tenant = ["Tenant"] if spec is SLICED else []
    assert list(columns(table).values()) == ["Namespace", "Service model", "SLO", *tenant,
                                             "Burn now", "Burn 1h", "Budget left", "Objective"]
    assert [t["id"] for t in table["transformations"]] == ["merge", "organize"]
    rows = ", ".join(fleet_labels(spec))
    for target in table["targets"]:
        expr = target["expr"]
        assert target["instant"] and target["format"] == "table"
        assert "$" not in expr, expr  # no $namespace, $model_name, $model or $pod: every service, always
        assert re.match(rf"(sort_desc\()?(max|min) by \({re.escape(rows)}\) \(", expr), expr
        read = selectors(expr)
        assert read and all(metric.startswith("slo:") for metric, _ in read), expr
        for _, matchers in read:  # this spec's SLOs, nothing narrower
            assert [(m.label, m.op, m.value) for m in matchers if m.label != "sloth_slo"] == [
                ("sloth_service", "=", spec.service)], expr


def test_fleet_rows_link_to_their_service_on_this_dashboard():
    table, board = fleet_table(SPEC), slo_overview(SPEC)
    (link,) = table["fieldConfig"]["defaults"]["links"]
    assert link["url"] == (f"/d/{board.uid}?var-namespace=${{__data.fields.namespace}}"
                           "&var-model_name=${__data.fields.model_name}&${__url_time_range}")
    # Grafana finds ${__data.fields.X} by field name before display name: the label columns keep theirs.
    assert {"namespace", "model_name"} <= set(columns(table))
    assert {"namespace", "model_name"} <= set(board.variables)
    # A spec without an identity (Sloth's) has no service to open: no link.
    anonymous = dataclasses.replace(SPEC, identity=())
    assert slo_overview(anonymous).rows[0][1][0].links == ()


def test_fleet_table_sorted_by_burn_now_highest_first():
    table = fleet_table(SPEC)
    assert table["options"]["sortBy"] == [{"displayName": "Burn now", "desc": True}]
    titles = columns(table)
    (burn,) = [t for t in table["targets"] if titles[f"Value #{t['refId']}"] == "Burn now"]
    assert burn["expr"] == ('sort_desc(max by (namespace, model_name, sloth_slo) '
                            f'(slo:current_burn_rate:ratio{{sloth_service="{SPEC.service}"}}))')
    units = {o["matcher"]["options"]: o["properties"][0]["value"] for o in table["fieldConfig"]["overrides"]}
    assert units == {"Burn now": "short", "Burn 1h": "short"}


def test_fleet_burn_over_each_slos_own_page_window():
    """SLOs of different periods: each SLO's burn over its own fastest page tier's long window."""
    (_, (table,)) = slo_overview(MIXED_PERIODS).rows[0]
    (page,) = [query for query in table.queries if query.legend == "Burn over the page window"]
    terms = page.expr.split("\nor\n")
    assert len(terms) == 2
    assert 'slo:sli_error:ratio_rate14m{sloth_service="llm-inference", sloth_slo=~"ttft"}' in terms[0]
    assert ('slo:sli_error:ratio_rate1h{sloth_service="llm-inference", '
            'sloth_slo=~"availability|correctness|e2e-latency|goodput|gpu-utilization|queue-time"}') in terms[1]


@pytest.mark.parametrize("spec", [SPEC, SLICED], ids=["default", "sliced"])
def test_panel_query_listing_covers_every_target_with_nothing_left_to_fill_in(spec: Spec):
    """all_panel_queries: every target of every generated dashboard, in order, with variables on All and
    Grafana's intervals as 1m ($__rate_interval), 15s ($__interval) and 1h ($__range, the default range)."""
    listed = all_panel_queries(spec)
    generated = boards(spec).values()
    targets = [(board["title"], panel["title"], target) for board in generated for panel in panels(board)
               for target in panel["targets"]]
    assert [(q.dashboard, q.panel) for q in listed] == [(board, panel) for board, panel, _ in targets]
    assert {q.dashboard for q in listed} == {board["title"] for board in generated}
    for query, (_, _, target) in zip(listed, targets):
        assert "$" not in query.expr, query
        assert query.expr == expand(target["expr"], rate_interval="1m", interval="15s", range_="1h")
        assert query.instant == target.get("instant", False)
    exprs = "\n".join(q.expr for q in listed)
    assert "[1m]" in exprs and 'namespace=~".*"' in exprs
    assert ("[1h]" in exprs) == any("[$__range]" in target["expr"] for _, _, target in targets)


def fleet_series(spec: Spec) -> tuple[list[dict], dict[str, dict[tuple[str, ...], float]]]:
    """Recordings of spec's SLOs for three services in two namespaces, one of them also as a duplicate
    (an extra label: a second rule file), and another service's spec: the input, and per column {row: value}."""
    series, expected = [], {"Burn now": {}, "Burn 1h": {}, "Budget left": {}, "Objective": {}}
    services = (("prod", "llama", 2.0), ("prod", "qwen", 16.0), ("staging", "llama", 0.5))
    for i, slo in enumerate(spec.slos):
        sloth = {"sloth_id": f"{spec.service}-{slo.key}", "sloth_service": spec.service, "sloth_slo": slo.name,
                 **slo.slice}
        series += [(sloth, "slo:objective:ratio", slo.objective_ratio),
                   (sloth, "slo:error_budget:ratio", slo.error_budget)]
        for namespace, model_name, burn in services:
            service = {**sloth, "namespace": namespace, "model_name": model_name}
            row = (namespace, model_name, slo.name, *slo.slice.values())
            now, hour, left = burn + i, (burn + i) * slo.error_budget / 2, 1 - burn / 10
            series += [(service, "slo:current_burn_rate:ratio", now),
                       ({**service, "sloth_window": "1h"}, "slo:sli_error:ratio_rate1h", hour),
                       (service, "slo:period_error_budget_remaining:ratio", left)]
            if model_name == "qwen":  # the same again, lower burn and budget: a row still, the worst of the two
                series += [({**service, "copy": "b"}, "slo:current_burn_rate:ratio", now - 1),
                           ({**service, "copy": "b"}, "slo:period_error_budget_remaining:ratio", left - 0.5)]
                left -= 0.5
            expected["Burn now"][row] = now
            expected["Burn 1h"][row] = hour / slo.error_budget
            expected["Budget left"][row] = left
            expected["Objective"][row] = slo.objective_ratio
        other = {**sloth, "sloth_service": "another-service", "sloth_id": f"another-{slo.key}"}
        series += [(other, "slo:objective:ratio", 0.5),
                   ({**other, "namespace": "prod", "model_name": "llama"}, "slo:current_burn_rate:ratio", 99.0)]
    return [{"series": metric + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}",
             "values": f"{value!r}x30"} for labels, metric, value in series], expected


@needs_promtool
@pytest.mark.parametrize("spec", [SPEC, SLICED], ids=["default", "sliced"])
def test_fleet_table_queries_in_promtool(tmp_path, spec: Spec):
    """Each column over synthetic recordings: one row per (service, SLO[, tenant]), a duplicate series
    not doubling one, another spec's services absent, the objective on every service's row."""
    (_, (table,)) = slo_overview(spec).rows[0]
    inputs, expected = fleet_series(spec)
    labels = fleet_labels(spec)
    tests = [{"expr": query.expr, "eval_time": "20m",
              "exp_samples": [{"labels": "{" + ", ".join(f'{k}="{v}"' for k, v in zip(labels, row)) + "}",
                               "value": value} for row, value in sorted(expected[query.legend].items())]}
             for query in table.queries]
    assert len(tests) == 4 and all(len(t["exp_samples"]) == 3 * len(spec.slos) for t in tests)
    path = tmp_path / "fleet.test.yaml"
    path.write_text(yaml.safe_dump({"rule_files": [], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": inputs, "promql_expr_test": tests}]}))
    result = subprocess.run(["promtool", "test", "rules", path.name], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def promtool_series(spec: Spec) -> list[dict]:
    """What Prometheus would hold for SLICED: its SLOs' recordings (medical's budget the lowest), the
    engine's goodput verdicts (medical 95% good, and "chat", a tenant the spec does not name, with no row
    of its own) and two pods' tenant costs (medical's: $3 an hour over 1.5M tokens an hour)."""
    series = []
    for slo in spec.slos:
        labels = {"sloth_id": f"{spec.service}-{slo.key}", "sloth_service": spec.service, "sloth_slo": slo.name,
                  **slo.slice}
        budget_left = 0.25 if slo.slice.get("model") == "medical" else 0.75
        service = {**labels, "namespace": "ns", "model_name": "base"}
        series += [(labels, "slo:objective:ratio", slo.objective_ratio),
                   (service, f"slo:sli_error:ratio_rate{slo.period}", 0.75 * slo.error_budget + 0.25 * budget_left),
                   (service, "slo:period_error_budget_remaining:ratio", budget_left),
                   (service, "slo:current_burn_rate:ratio", 2.0)]
    engine = {"namespace": "ns", "pod": "a", "model_name": "base"}
    for model, good in (("medical", 57), ("chat", 30)):
        for verdict, per_minute in (("true", good), ("false", 60 - good)):
            series.append(({**engine, "slo": "goodput", "good": verdict, "model": model},
                           "slo_engine_slo_requests_total", f"0+{per_minute}x120"))
    for pod, per_hour, per_million in (("a", 2, 4), ("b", 1, 1)):
        for metric, value in (("sidecar_tenant_cost_usd_per_hour", per_hour),
                              ("sidecar_tenant_cost_usd_per_million_tokens", per_million)):
            series.append(({"namespace": "ns", "pod": pod, "model": "medical"}, metric, value))
    return [{"series": metric + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}",
             "values": values if isinstance(values, str) else f"{values}x120"} for labels, metric, values in series]


@needs_promtool
def test_tenant_table_queries_in_promtool(tmp_path):
    """The table's queries over synthetic series, with every tenant and with one picked: a row per sliced
    (SLO, tenant), goodput and cost on each of medical's rows, nothing for an unsliced SLO."""
    (table,) = [panel for title, panels in slo_overview(SLICED).rows if title == "Tenants" for panel in panels]
    sliced = sorted({(slo.name, slo.slice["model"]) for slo in SLICED.slos if slo.slice})
    objective = {slo.key: slo.objective_ratio for slo in SLICED.slos}
    expected = {  # column -> {(slo, tenant): value}
        "Objective": {(name, t): objective[f"{name}/{t}"] for name, t in sliced},
        "Budget left": {(name, t): 0.25 if t == "medical" else 0.75 for name, t in sliced},
        "Burn now": {row: 2.0 for row in sliced},
        "Goodput": {(name, t): 0.95 for name, t in sliced if t == "medical"},
        "Cost per 1M tokens": {(name, t): 2.0 for name, t in sliced if t == "medical"},
    }
    tests = []
    for query in table.queries:
        if query.legend not in expected:
            continue
        for tenant in (".*", "medical"):
            rows = {row: value for row, value in expected[query.legend].items() if re.fullmatch(tenant, row[1])}
            tests.append({"expr": expand(query.expr, range_="1h", values={"model": tenant}), "eval_time": "100m",
                          "exp_samples": [{"labels": f'{{sloth_slo="{name}", model="{t}"}}', "value": value}
                                          for (name, t), value in sorted(rows.items())]})
    assert len(tests) == 2 * len(expected)
    path = tmp_path / "tenants.test.yaml"
    path.write_text(yaml.safe_dump({"rule_files": [], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": promtool_series(SLICED), "promql_expr_test": tests}]}))
    result = subprocess.run(["promtool", "test", "rules", path.name], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_every_query_parses_in_promtool(tmp_path):
    """Every query, with all tenants (the listing a benchmark runs) and with one picked, as the expression of
    a rule promtool checks."""
    exprs = [query.expr for spec in (SPEC, SLICED, MIXED_PERIODS) for query in all_panel_queries(spec)]
    exprs += [expand(query.expr, values={"model": "medical"}) for spec in (SPEC, SLICED) for board in dashboards(spec)
              for panel in board.panels() for query in panel.queries]
    rules = [{"record": f"dashboard:query_{i}:check", "expr": expr} for i, expr in enumerate(exprs)]
    path = tmp_path / "queries.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
