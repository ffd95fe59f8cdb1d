"""Static HTML pages of the dashboards: one SVG chart per panel, drawn from query results.

Pure: it takes the dashboard model and the series Prometheus returned and gives
back HTML text, with no network and no JavaScript library, so the page opens in
an air-gapped browser. The same model feeds Grafana's JSON, so a panel's
queries, unit and thresholds here are the ones Grafana shows. Fetching the data
lives in `slo_sidecar/app/preview.py`.
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass, field

from .model import Dashboard, Panel

COLUMN_WIDTH, HEIGHT = 50, 220  # SVG units: a 12-column panel is 600 wide, so text keeps its size across widths
LEFT, RIGHT, TOP, BOTTOM = 64, 10, 10, 24  # plot margins inside the SVG
PALETTE = ("#73bf69", "#f2cc0c", "#5794f2", "#ff780a", "#b877d9", "#8ab8ff", "#f2495c", "#fade2a")
COLOURS = {"green": "#73bf69", "orange": "#ff9830", "red": "#f2495c"}


@dataclass(frozen=True)
class Series:
    name: str  # the legend, with {{label}} already filled in
    points: tuple[tuple[float, float], ...]  # (unix seconds, value); NaN for a missing value
    labels: dict[str, str] = field(default_factory=dict)  # the series' labels (a table's row key)
    query: int = 0  # which of the panel's queries returned it (a table's column)


@dataclass
class PanelData:
    """What one panel's queries returned over one time range."""

    series: list[Series] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# --- numbers as Grafana shows them --------------------------------------------------------------

def _significant(value: float, digits: int = 3) -> str:
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    text = f"{value:.{digits}g}"
    if "e" in text:  # 1.5e+03 reads worse than 1500
        text = f"{value:.{max(0, digits - 1 - int(math.floor(math.log10(abs(value)))))}f}"
    return text


def _scaled(value: float, steps: tuple[tuple[float, str], ...]) -> str:
    """value in the largest step whose size it reaches (steps smallest first)."""
    size, suffix = steps[0]
    for step_size, step_suffix in steps:
        if abs(value) >= step_size:
            size, suffix = step_size, step_suffix
    return f"{_significant(value / size)}{suffix}"


def format_value(value: float, unit: str) -> str:
    """A value in a panel's Grafana unit: 0.25 s -> "250 ms", 0.031 percentunit -> "3.1%"."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if unit == "s":
        if value == 0:
            return "0 s"
        return _scaled(value, ((1e-6, " µs"), (1e-3, " ms"), (1, " s"), (60, " min"), (3600, " h"), (86400, " day")))
    if unit == "percentunit":
        return f"{_significant(value * 100)}%"
    if unit == "bytes":
        return _scaled(value, ((1, " B"), (1024, " KiB"), (1024**2, " MiB"), (1024**3, " GiB"), (1024**4, " TiB")))
    if unit == "currencyUSD":
        return f"${value:,.2f}" if abs(value) >= 0.01 or value == 0 else f"${_significant(value)}"
    if unit == "celsius":
        return f"{_significant(value)} °C"
    si = ((1, " "), (1e3, " k"), (1e6, " M"), (1e9, " G"), (1e12, " T"))
    if unit in ("watt", "hertz"):
        return _scaled(value, si) + ("W" if unit == "watt" else "Hz")
    text = _scaled(value, si).rstrip()
    return text + " req/s" if unit == "reqps" else text


# --- charts ---------------------------------------------------------------------------------------

def _finite(series: list[Series]) -> list[float]:
    return [v for s in series for _, v in s.points if math.isfinite(v)]


def y_range(panel: Panel, series: list[Series]) -> tuple[float, float]:
    """The axis: the panel's min/max where set, else the data's, widened to show the threshold lines."""
    values = _finite(series)
    if panel.threshold_lines:
        values += [value for value, _ in panel.thresholds if abs(value) < 1e6]
    low = panel.min if panel.min is not None else min(values, default=0.0)
    high = panel.max if panel.max is not None else max(values, default=1.0)
    if high <= low:
        high = low + (abs(low) or 1.0)
    elif panel.max is None:
        high += (high - low) * 0.05
    return low, high


def _step_colour(panel: Panel, value: float) -> str:
    colour = "green"
    for threshold, step in panel.thresholds:
        if value >= threshold:
            colour = step
    return COLOURS.get(colour, colour)


def _polylines(points: tuple[tuple[float, float], ...], x, y, max_gap_s: float) -> list[str]:
    """Point lists of the line, broken where values are missing or samples are far apart."""
    lines, current, last_t = [], [], None
    for t, v in points:
        if not math.isfinite(v) or (last_t is not None and t - last_t > max_gap_s):
            if len(current) > 1:
                lines.append(" ".join(current))
            current = []
        if math.isfinite(v):
            current.append(f"{x(t):.1f},{y(v):.1f}")
        last_t = t
    if len(current) > 1:
        lines.append(" ".join(current))
    elif len(current) == 1:  # a lone point still shows, as a short dash
        px, py = current[0].split(",")
        lines.append(f"{float(px) - 2:.1f},{py} {float(px) + 2:.1f},{py}")
    return lines


def timeseries_svg(panel: Panel, data: PanelData, start: float, end: float, step_s: float) -> str:
    WIDTH = COLUMN_WIDTH * panel.width  # noqa: N806  (a constant per chart)
    low, high = y_range(panel, data.series)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(t: float) -> float:
        return LEFT + (t - start) / max(end - start, 1e-9) * plot_w

    def y(v: float) -> float:
        return TOP + (1 - (min(max(v, low), high) - low) / (high - low)) * plot_h

    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" xmlns="http://www.w3.org/2000/svg">']
    for i in range(5):  # y grid and labels
        value = low + (high - low) * i / 4
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}"/>')
        parts.append(f'<text class="axis" x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end">'
                     f"{html.escape(format_value(value, panel.unit))}</text>")
    for i in range(5):  # x labels, UTC
        t = start + (end - start) * i / 4
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        parts.append(f'<text class="axis" x="{x(t):.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}">'
                     f'{time.strftime("%H:%M:%S" if end - start < 600 else "%H:%M", time.gmtime(t))}</text>')
    if panel.threshold_lines:
        for value, colour in panel.thresholds:
            if low <= value <= high:
                parts.append(f'<line class="threshold" stroke="{COLOURS.get(colour, colour)}" x1="{LEFT}" '
                             f'x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}"/>')
    for i, series in enumerate(data.series):
        colour = PALETTE[i % len(PALETTE)]
        for line in _polylines(series.points, x, y, max_gap_s=2.5 * step_s):
            parts.append(f'<polyline class="series" stroke="{colour}" points="{line}"/>')
    if not data.series:
        parts.append(f'<text class="nodata" x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">No data</text>')
    parts.append("</svg>")
    return "".join(parts)


def _last(series: Series) -> float:
    return next((v for _, v in reversed(series.points) if math.isfinite(v)), math.nan)


def legend_html(panel: Panel, data: PanelData) -> str:
    items = [f'<span class="item"><i style="background:{PALETTE[i % len(PALETTE)]}"></i>'
             f"{html.escape(series.name)} <b>{html.escape(format_value(_last(series), panel.unit))}</b></span>"
             for i, series in enumerate(data.series)]
    return f'<div class="legend">{"".join(items)}</div>'


def stat_html(panel: Panel, data: PanelData) -> str:
    if not data.series:
        return '<div class="stat nodata">No data</div>'
    values = []
    for series in data.series:
        value = _last(series)
        label = f'<small>{html.escape(series.name)}</small>' if len(data.series) > 1 else ""
        values.append(f'<div class="stat" style="color:{_step_colour(panel, value)}">'
                      f"{html.escape(format_value(value, panel.unit))}{label}</div>")
    return "".join(values)


def table_rows(panel: Panel, data: PanelData) -> list[list[str]]:
    """A table panel as Grafana merges it: one row per label set of `label_columns`, a column per query
    (each series' last value in the query's unit), sorted by `sort_by`, ascending unless `sort_desc` (empty
    cells last either way)."""
    keys = [label for label, _ in panel.label_columns]
    rows: dict[tuple[str, ...], dict[int, float]] = {}
    for series in data.series:
        rows.setdefault(tuple(series.labels.get(key, "") for key in keys), {})[series.query] = _last(series)
    titles = [query.legend for query in panel.queries]
    order = titles.index(panel.sort_by) if panel.sort_by in titles else None

    def sort_key(item: tuple[tuple[str, ...], dict[int, float]]) -> tuple:
        value = item[1].get(order, math.nan) if order is not None else math.nan
        if math.isnan(value):
            return (True, 0.0, item[0])
        return (False, -value if panel.sort_desc else value, item[0])

    return [[*key, *(format_value(values[i], query.unit or panel.unit) if i in values else ""
                     for i, query in enumerate(panel.queries))]
            for key, values in sorted(rows.items(), key=sort_key)]


def table_html(panel: Panel, data: PanelData) -> str:
    rows = table_rows(panel, data)
    if not rows:
        return '<div class="stat nodata">No data</div>'
    head = "".join(f"<th>{html.escape(title)}</th>" for title in
                   (*(title for _, title in panel.label_columns), *(query.legend for query in panel.queries)))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def panel_html(panel: Panel, data: PanelData, start: float, end: float, step_s: float) -> str:
    body = stat_html(panel, data) if panel.kind == "stat" else table_html(panel, data) if panel.kind == "table" \
        else timeseries_svg(panel, data, start, end, step_s) + legend_html(panel, data)
    errors = "".join(f'<p class="error">{html.escape(error)}</p>' for error in data.errors)
    queries = "".join(f"<code>{html.escape(query.expr)}</code>" for query in panel.queries)
    return (f'<section class="panel w{panel.width}" data-kind="{panel.kind}" data-series="{len(data.series)}">'
            f'<h3 title="{html.escape(panel.description)}">{html.escape(panel.title)}</h3>{body}{errors}'
            f"<details><summary>queries</summary>{queries}</details></section>")


# --- the page -------------------------------------------------------------------------------------

STYLE = """
body{background:#111217;color:#ccccdc;font:13px/1.4 system-ui,sans-serif;margin:16px}
a{color:#6e9fff}h1{font-size:20px;margin:0 0 4px}h2{font-size:15px;margin:18px 0 6px;border-bottom:1px solid #2c3235}
header p{margin:2px 0;color:#8e8e9e}
.grid-row{display:grid;grid-template-columns:repeat(24,1fr);gap:8px}
.panel{background:#181b1f;border:1px solid #2c3235;border-radius:3px;padding:6px 8px;min-width:0}
.w6{grid-column:span 6}.w8{grid-column:span 8}.w12{grid-column:span 12}.w24{grid-column:span 24}
h3{font-size:13px;margin:0 0 4px}.chart{width:100%;height:auto;display:block}
.grid{stroke:#2c3235;stroke-width:1}.axis{fill:#8e8e9e;font-size:11px}
.threshold{stroke-width:1.5;stroke-dasharray:6 4}.series{fill:none;stroke-width:2}
.nodata{fill:#8e8e9e;font-size:14px}.legend{font-size:12px}.legend .item{margin-right:12px;white-space:nowrap}
.legend i{display:inline-block;width:12px;height:4px;margin-right:4px;vertical-align:middle}
.stat{font-size:34px;font-weight:600;text-align:center;padding:18px 0}.stat small{display:block;font-size:11px}
.error{color:#f2495c}details{font-size:11px;color:#8e8e9e}code{display:block;white-space:pre-wrap}
.range{display:none}.range.shown{display:block}
.table{width:100%;border-collapse:collapse}.table th,.table td{text-align:left;padding:3px 6px;border-bottom:1px solid #2c3235}
"""

SCRIPT = """
function showRange(name){document.querySelectorAll('.range').forEach(function(r){
  r.classList.toggle('shown', r.dataset.range === name);});
  history.replaceState(null, '', '#' + name);}
var wanted = location.hash.slice(1), picker = document.getElementById('range');
if (wanted && document.querySelector('.range[data-range="' + wanted + '"]')) picker.value = wanted;
showRange(picker.value);
"""


def page(board: Dashboard, ranges: dict[str, tuple[float, float, float, list[PanelData]]], links: dict[str, str],
         source: str) -> str:
    """One dashboard as an HTML page.

    ranges: {label: (start, end, step_s, one PanelData per panel in board order)}, shown one at a time
    through a picker; links: {title: file name} of the other dashboards' pages; source: where the data came from.
    """
    first = next(iter(ranges))
    options = "".join(f'<option value="{html.escape(label)}"{" selected" if label == first else ""}>'
                      f"last {html.escape(label)}</option>" for label in ranges)
    nav = " · ".join(f'<a href="{html.escape(href)}">{html.escape(title)}</a>' for title, href in links.items())
    sections = []
    for label, (start, end, step_s, panel_data) in ranges.items():
        data = iter(panel_data)
        rows = []
        for title, panels in board.rows:
            cells = "".join(panel_html(panel, next(data), start, end, step_s) for panel in panels)
            rows.append(f"<h2>{html.escape(title)}</h2><div class=\"grid-row\">{cells}</div>")
        span = f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(start))} to " \
               f"{time.strftime('%H:%M:%S', time.gmtime(end))} UTC, one point per {_significant(step_s)} s"
        sections.append(f'<div class="range" data-range="{html.escape(label)}"><p>{span}</p>{"".join(rows)}</div>')
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(board.title)}"
            f"</title><style>{STYLE}</style></head><body><header><h1>{html.escape(board.title)}</h1>"
            f"<p>{html.escape(board.description)}</p><p>Preview of Grafana dashboard <code style=\"display:inline\">"
            f"{html.escape(board.uid)}</code> from {html.escape(source)}, all template variables on All. "
            f"Time range: <select id=\"range\" onchange=\"showRange(this.value)\">{options}</select></p>"
            f"<p>{nav}</p></header>{''.join(sections)}<script>{SCRIPT}</script></body></html>\n")
