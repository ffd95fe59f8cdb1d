"""What a dashboard shows, independent of Grafana: panels, their queries, units and thresholds.

Pure data. `definitions.py` builds these from the SLO spec; `grafana.py` turns
them into Grafana's JSON with grafana-foundation-sdk; tests run every query
against a real Prometheus. One model, so a panel cannot say one thing in
Grafana and another in a check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Template variables: every dashboard picks services (namespace, pod, the service's base model
# `model_name`); those that chart per-tenant series also pick tenants (`model`: the served name of the
# base model or a LoRA adapter). `expand` gives the values a check substitutes for "All".
SERVICE_VARIABLES = ("namespace", "pod", "model_name")
TENANT_VARIABLES = (*SERVICE_VARIABLES, "model")
VARIABLES = TENANT_VARIABLES
ALL = ".*"
# A dashboard's default time range (now-1h to now), and what a check puts for Grafana's interval variables:
# $__rate_interval as Grafana computes it at a 15 s scrape interval over 1h (max(step + scrape, 4 x scrape)).
TIME_RANGE, RATE_INTERVAL, INTERVAL = "1h", "1m", "15s"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""  # a table's column title
    exemplars: bool = False
    instant: bool = False  # one value per series, at the end of the range (tables)
    unit: str = ""  # a table column's unit, where it differs from the panel's


@dataclass(frozen=True)
class Panel:
    title: str
    description: str  # the question the panel answers
    queries: tuple[Query, ...]
    unit: str  # Grafana unit id: s, percentunit, reqps, bytes, watt, hertz, celsius, currencyUSD, short
    kind: str = "timeseries"  # or "stat", "state-timeline", or "table" (instant queries merged into one row per
    # label set)
    thresholds: tuple[tuple[float, str], ...] = ()  # (value, colour): steps above a green base
    threshold_lines: bool = False  # draw the thresholds as lines on a time series
    min: float | None = None
    max: float | None = None
    width: int = 12  # of 24 columns
    # Tables: the label columns, (label, title), first and in this order; the column sorted (ascending
    # unless sort_desc); data links on every cell, (title, URL), the URL reading the row's fields.
    label_columns: tuple[tuple[str, str], ...] = ()
    sort_by: str = ""
    sort_desc: bool = False
    links: tuple[tuple[str, str], ...] = ()
    states: tuple[tuple[float, str, str], ...] = ()  # (value, word, colour): a state timeline's value mappings


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    rows: tuple[tuple[str, tuple[Panel, ...]], ...]
    tags: tuple[str, ...] = field(default=("slo-sidecar",))
    variables: tuple[str, ...] = SERVICE_VARIABLES  # the template variables it offers, in order

    def panels(self) -> list[Panel]:
        return [panel for _, panels in self.rows for panel in panels]


def panel_ids(board: Dashboard) -> dict[tuple[str, str], int]:
    """{(row title, panel title): panel id}: rows and panels numbered in the model's order, as Grafana
    gets them, so an alert can link a panel without the Grafana SDK."""
    ids, panel_id = {}, 0
    for title, panels in board.rows:
        panel_id += 1
        for panel in panels:
            panel_id += 1
            ids[(title, panel.title)] = panel_id
    return ids


def dashboard_url(grafana_url: str, uid: str, params: dict[str, str | int] | None = None,
                  keep_time: bool = False) -> str:
    """A dashboard's address: `{grafana_url}/d/{uid}`, then its query parameters in order (values as given:
    Grafana's `${...}` macros stay for Grafana to fill in), then with keep_time the viewer's time range."""
    parts = [f"{name}={value}" for name, value in (params or {}).items()]
    parts += ["${__url_time_range}"] if keep_time else []
    return f"{grafana_url}/d/{uid}" + ("?" + "&".join(parts) if parts else "")


def panel_url(spec_grafana_url: str, board: Dashboard, row: str, title: str) -> str:
    """Where an alert's annotation points: the panel on its own, keeping the alert's time."""
    return dashboard_url(spec_grafana_url, board.uid, {"viewPanel": panel_ids(board)[(row, title)]})


def row_link(uid: str, labels: tuple[str, ...]) -> str:
    """A table row's link to a dashboard (Grafana, relative) with each of `labels`' variables set to the
    row's value of that label column (`${__data.fields.<label>}`), keeping the viewer's time range."""
    return dashboard_url("", uid, {f"var-{label}": f"${{__data.fields.{label}}}" for label in labels},
                         keep_time=True)


def expand(expr: str, rate_interval: str = RATE_INTERVAL, interval: str = INTERVAL, range_: str = TIME_RANGE,
           values: dict[str, str] | None = None) -> str:
    """The query as Prometheus receives it from Grafana: every variable on "All" unless `values` picks one.

    Whole names only, as Grafana reads them: `$model` is not the start of `$model_name`."""
    picked = {name: (values or {}).get(name, ALL) for name in VARIABLES}
    expr = re.sub(r"\$(\w+)", lambda m: picked.get(m[1], m[0]), expr)
    return (expr.replace("$__rate_interval", rate_interval).replace("$__interval", interval)
            .replace("$__range", range_))


@dataclass(frozen=True)
class PanelQuery:
    """One query of one panel, as Prometheus receives it with every variable on All (see `panel_queries`)."""

    dashboard: str  # the dashboard's title
    panel: str  # the panel's title
    expr: str
    instant: bool = False  # a table's: evaluated once, at the end of the range; else a range query over it


def panel_queries(boards: list[Dashboard]) -> list[PanelQuery]:
    """Every query of every panel of `boards`, in dashboard and panel order, expanded as `expand` does by
    default: variables on All (`.*`), $__rate_interval 1m, $__interval 15s, $__range the default time
    range (1h). What a benchmark runs against a Prometheus, to time each."""
    return [PanelQuery(board.title, panel.title, expand(query.expr), query.instant)
            for board in boards for panel in board.panels() for query in panel.queries]
