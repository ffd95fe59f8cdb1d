"""Grafana JSON (import format, Grafana 11.6's schema) from the dashboard model, via grafana-foundation-sdk."""

from __future__ import annotations

import json

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common, dashboard as models
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from .model import ALL, TIME_RANGE, Dashboard, Panel, Query, dashboard_url, panel_ids

DATASOURCE = models.DataSourceRef(type_val="prometheus", uid="${datasource}")
PANEL_HEIGHT = 8
VARIABLE_SOURCES = {  # variable -> (label shown, metric, label its values come from)
    "namespace": ("Namespace", "sidecar_collector_up", "namespace"),
    "pod": ("Pod", 'sidecar_collector_up{namespace=~"$namespace"}', "pod"),
    "model_name": ("Service model", "vllm:num_requests_running", "model_name"),
    # The engine's tenants: served names that requests named (and "unknown"), of the picked services.
    "model": ("Tenant", 'slo_engine_http_requests_total{namespace=~"$namespace", model_name=~"$model_name"}',
              "model"),
}


def _thresholds(panel: Panel) -> builders.ThresholdsConfig:
    steps = [models.Threshold(value=None, color="green")]
    steps += [models.Threshold(value=value, color=colour) for value, colour in panel.thresholds]
    return builders.ThresholdsConfig().mode(models.ThresholdsMode.ABSOLUTE).steps(steps)


def _value_column(panel: Panel, index: int) -> str:
    """The field Grafana names a table query's value: "Value", or "Value #<refId>" beside other queries."""
    return "Value" if len(panel.queries) == 1 else f"Value #{_ref_id(index)}"


def _ref_id(index: int) -> str:
    return chr(ord("A") + index)


def _table(panel: Panel, builder: table.Panel) -> table.Panel:
    """Instant queries merged into one row per label set, the label columns first, named, sorted.

    Grafana's merge joins rows whose shared fields (the labels, and the one instant timestamp) are
    equal; organize then hides the timestamp and names the value columns after their queries."""
    columns = [*(label for label, _ in panel.label_columns),
               *(_value_column(panel, i) for i in range(len(panel.queries)))]
    titles = {**dict(panel.label_columns),
              **{_value_column(panel, i): query.legend for i, query in enumerate(panel.queries)}}
    builder = builder.with_transformation(models.DataTransformerConfig(id_val="merge", options={}))
    builder = builder.with_transformation(models.DataTransformerConfig(id_val="organize", options={
        "excludeByName": {"Time": True}, "indexByName": {name: i for i, name in enumerate(columns)},
        "renameByName": titles}))
    for query in panel.queries:
        if query.unit:
            builder = builder.override_by_name(query.legend, [models.DynamicConfigValue("unit", query.unit)])
    if panel.sort_by:
        builder = builder.sort_by([common_builders.TableSortByFieldState().display_name(panel.sort_by)
                                   .desc(panel.sort_desc)])
    if panel.links:
        builder = builder.data_links([builders.DashboardLink(title).url(url) for title, url in panel.links])
    return builder


def _target(query: Query, index: int) -> prometheus.Dataquery:
    target = (prometheus.Dataquery().expr(query.expr).legend_format(query.legend or "__auto")
              .ref_id(_ref_id(index)).datasource(DATASOURCE))
    if query.exemplars:
        target = target.exemplar(True)
    if query.instant:
        target = target.instant().format(PromQueryFormat.TABLE)
    return target


def _panel(panel: Panel, panel_id: int, x: int, y: int):
    builder = {"stat": stat.Panel, "table": table.Panel, "state-timeline": statetimeline.Panel}.get(
        panel.kind, timeseries.Panel)()
    builder = (builder.id(panel_id).title(panel.title).description(panel.description).unit(panel.unit)
               .datasource(DATASOURCE).thresholds(_thresholds(panel))
               .grid_pos(models.GridPos(h=PANEL_HEIGHT, w=panel.width, x=x, y=y)))
    if panel.min is not None:
        builder = builder.min(panel.min)
    if panel.max is not None:
        builder = builder.max(panel.max)
    if panel.kind == "timeseries" and panel.threshold_lines:
        builder = builder.thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.LINE))
    if panel.kind == "table":
        builder = _table(panel, builder)
    if panel.states:  # a state timeline's values as words, each in its colour
        builder = builder.mappings([models.ValueMap(options={
            f"{value:g}": models.ValueMappingResult(text=text, color=colour, index=index)
            for index, (value, text, colour) in enumerate(panel.states)})])
    for i, query in enumerate(panel.queries):
        builder = builder.with_target(_target(query, i))
    return builder


def to_grafana(board: Dashboard, others: list[Dashboard]) -> dict:
    builder = (builders.Dashboard(board.title).uid(board.uid).description(board.description)
               .tags(list(board.tags)).editable().time(f"now-{TIME_RANGE}", "now").refresh("30s").timezone("browser"))
    builder = builder.with_variable(builders.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    for name in board.variables:
        title, metric, label = VARIABLE_SOURCES[name]
        builder = builder.with_variable(
            builders.QueryVariable(name).label(title).datasource(DATASOURCE)
            .query(f"label_values({metric}, {label})").multi(True).include_all(True).all_value(ALL)
            .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED))
    y, ids = 0, panel_ids(board)
    for title, panels in board.rows:  # ids and positions follow the model's order: stable across runs
        row_id = ids[(title, panels[0].title)] - 1
        builder = builder.with_row(builders.Row(title).id(row_id).grid_pos(models.GridPos(h=1, w=24, x=0, y=y)))
        y += 1
        x = 0
        for panel in panels:
            if x + panel.width > 24:
                x, y = 0, y + PANEL_HEIGHT
            builder = builder.with_panel(_panel(panel, ids[(title, panel.title)], x, y))
            x += panel.width
        y += PANEL_HEIGHT
    for other in others:
        if other.uid != board.uid:
            builder = builder.link(builders.DashboardLink(other.title).type(models.DashboardLinkType.LINK)
                                   .url(dashboard_url("", other.uid)).keep_time(True).include_vars(True))
    return json.loads(JSONEncoder(sort_keys=True, indent=2).encode(builder.build()))


def render(boards: list[Dashboard]) -> dict[str, str]:
    """{file name: JSON text}, one per dashboard, byte for byte reproducible."""
    return {f"{board.uid}.json": json.dumps(to_grafana(board, boards), indent=2, sort_keys=True) + "\n"
            for board in boards}


PROMETHEUS_UID, JAEGER_UID = "prometheus", "jaeger"
EXEMPLAR_TRACE_LABEL = "trace_id"  # the label the engine puts on its HTTP histogram's exemplars


def datasource_list(prometheus_url: str = "http://prometheus-operated:9090",
                    jaeger_url: str = "http://jaeger-query:16686") -> list[dict]:
    """Prometheus, with its exemplars' trace ids linked to Jaeger, and Jaeger."""
    return [
        {"name": "Prometheus", "type": "prometheus", "uid": PROMETHEUS_UID, "access": "proxy", "url": prometheus_url,
         "isDefault": True, "jsonData": {"exemplarTraceIdDestinations": [
             {"name": EXEMPLAR_TRACE_LABEL, "datasourceUid": JAEGER_UID, "urlDisplayLabel": "Trace in Jaeger"}]}},
        {"name": "Jaeger", "type": "jaeger", "uid": JAEGER_UID, "access": "proxy", "url": jaeger_url},
    ]


def datasources() -> str:
    """Grafana datasource provisioning for the dashboards.

    The dashboards pick their Prometheus through the `datasource` variable; the
    exemplar link is a setting of the Prometheus datasource, so it ships as this file
    (Grafana's provisioning directory, or the Grafana sidecar's datasource ConfigMap).
    """
    import yaml

    document = {"apiVersion": 1, "datasources": datasource_list()}
    header = ("# Generated by `slo-sidecar generate`: Grafana datasources for the slo-sidecar dashboards.\n"
              "# Set the two URLs to your Prometheus and Jaeger query service.\n")
    return header + yaml.safe_dump(document, sort_keys=False)
