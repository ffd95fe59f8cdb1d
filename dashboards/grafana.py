"""Grafana JSON (import format, Grafana 11.6's schema) from the dashboard model, via grafana-foundation-sdk."""

from __future__ import annotations

import json

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common, dashboard as models

from .model import ALL, VARIABLES, Dashboard, Panel, panel_ids

DATASOURCE = models.DataSourceRef(type_val="prometheus", uid="${datasource}")
PANEL_HEIGHT = 8
VARIABLE_SOURCES = {  # variable -> (metric, label) its values come from
    "namespace": ("sidecar_collector_up", "namespace"),
    "pod": ('sidecar_collector_up{namespace=~"$namespace"}', "pod"),
    "model": ("vllm:num_requests_running", "model_name"),
}


def _thresholds(panel: Panel) -> builders.ThresholdsConfig:
    steps = [models.Threshold(value=None, color="green")]
    steps += [models.Threshold(value=value, color=colour) for value, colour in panel.thresholds]
    return builders.ThresholdsConfig().mode(models.ThresholdsMode.ABSOLUTE).steps(steps)


def _panel(panel: Panel, panel_id: int, x: int, y: int):
    builder = (stat.Panel() if panel.kind == "stat" else timeseries.Panel())
    builder = (builder.id(panel_id).title(panel.title).description(panel.description).unit(panel.unit)
               .datasource(DATASOURCE).thresholds(_thresholds(panel))
               .grid_pos(models.GridPos(h=PANEL_HEIGHT, w=panel.width, x=x, y=y)))
    if panel.min is not None:
        builder = builder.min(panel.min)
    if panel.max is not None:
        builder = builder.max(panel.max)
    if panel.kind != "stat" and panel.threshold_lines:
        builder = builder.thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.LINE))
    for i, query in enumerate(panel.queries):
        target = (prometheus.Dataquery().expr(query.expr).legend_format(query.legend or "__auto")
                  .ref_id(chr(ord("A") + i)).datasource(DATASOURCE))
        if query.exemplars:
            target = target.exemplar(True)
        builder = builder.with_target(target)
    return builder


def to_grafana(board: Dashboard, others: list[Dashboard]) -> dict:
    builder = (builders.Dashboard(board.title).uid(board.uid).description(board.description)
               .tags(list(board.tags)).editable().time("now-1h", "now").refresh("30s").timezone("browser"))
    builder = builder.with_variable(builders.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    for name in VARIABLES:
        metric, label = VARIABLE_SOURCES[name]
        builder = builder.with_variable(
            builders.QueryVariable(name).label(name.capitalize()).datasource(DATASOURCE)
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
                                   .url(f"/d/{other.uid}").keep_time(True).include_vars(True))
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
