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
    kind: str = "timeseries"  # or "stat", or "table" (instant queries merged into one row per label set)
    thresholds: tuple[tuple[float, str], ...] = ()  # (value, colour): steps above a green base
    threshold_lines: bool = False  # draw the thresholds as lines on a time series
    min: float | None = None
    max: float | None = None
    width: int = 12  # of 24 columns
    # Tables: the label columns, (label, title), first and in this order; the column sorted ascending.
    label_columns: tuple[tuple[str, str], ...] = ()
    sort_by: str = ""


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


def panel_url(spec_grafana_url: str, board: Dashboard, row: str, title: str) -> str:
    """Where an alert's annotation points: the panel on its own, keeping the alert's time."""
    return f"{spec_grafana_url}/d/{board.uid}?viewPanel={panel_ids(board)[(row, title)]}"


def expand(expr: str, rate_interval: str = "1m", interval: str = "15s", range_: str = "1h",
           values: dict[str, str] | None = None) -> str:
    """The query as Prometheus receives it from Grafana: every variable on "All" unless `values` picks one.

    Whole names only, as Grafana reads them: `$model` is not the start of `$model_name`."""
    picked = {name: (values or {}).get(name, ALL) for name in VARIABLES}
    expr = re.sub(r"\$(\w+)", lambda m: picked.get(m[1], m[0]), expr)
    return (expr.replace("$__rate_interval", rate_interval).replace("$__interval", interval)
            .replace("$__range", range_))
