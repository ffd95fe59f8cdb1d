"""`slo-sidecar preview`: ask Prometheus what every dashboard panel would show, and write static pages.

The I/O edge of the preview: query_range calls to Prometheus's HTTP API with
the template variables on All, as Grafana would send them; the pages are drawn
by the pure `slo_sidecar.dashboards.preview`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.parse
from pathlib import Path

from slo_sidecar.dashboards.model import Dashboard, expand as expand_variables
from slo_sidecar.dashboards.preview import PanelData, Series, page
from slo_sidecar.iokit.arguments import http_url, positive
from slo_sidecar.iokit.files import write_atomically
from slo_sidecar.spec.model import duration_label, duration_seconds

from .processes import http_get

POINTS_PER_CHART = 240
_LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


class PreviewError(Exception):
    """Prometheus cannot be asked at all (a query that fails is shown on its panel instead)."""


def parse_duration(text: str) -> int:
    seconds = duration_seconds(text.strip())
    if not seconds:  # not a duration, or zero
        raise argparse.ArgumentTypeError(f"expected a duration such as 15m, 1h or 1d, got {text!r}")
    return seconds


def grafana_query(expr: str, step_s: float, scrape_interval_s: float, range_s: float = 3600) -> str:
    """The query as Grafana sends it: variables on All, $__rate_interval as Grafana computes it, $__range
    the page's time range."""
    rate_interval = max(step_s + scrape_interval_s, 4 * scrape_interval_s)
    return expand_variables(expr, f"{math.ceil(rate_interval)}s", f"{math.ceil(step_s)}s", f"{math.ceil(range_s)}s")


def legend(template: str, labels: dict[str, str], expr: str) -> str:
    if template and template != "__auto":
        return _LEGEND_LABEL.sub(lambda m: labels.get(m[1], ""), template)
    shown = {k: v for k, v in labels.items() if k != "__name__"}
    if not shown:
        return labels.get("__name__", expr)
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(shown.items())) + "}"


def query_range(prometheus_url: str, expr: str, start: float, end: float, step_s: float) -> list[dict]:
    """The matrix Prometheus returns; PreviewError if unreachable, ValueError (its message) if the query failed."""
    params = urllib.parse.urlencode({"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                     "step": f"{step_s:g}"})
    try:
        status, raw = http_get(f"{prometheus_url}/api/v1/query_range?{params}", timeout=30)
    except (OSError, ValueError) as error:  # unreachable, or not a URL
        raise PreviewError(f"cannot query Prometheus at {prometheus_url}: {error}") from None
    try:
        body = json.loads(raw)
    except ValueError as error:  # an error page, or not Prometheus at all
        if status != 200:
            raise ValueError(f"HTTP {status}") from None
        raise PreviewError(f"cannot query Prometheus at {prometheus_url}: {error}") from None
    if status != 200:
        raise ValueError(body.get("error", f"HTTP {status}"))
    return body["data"]["result"]


def panel_data(prometheus_url: str, board: Dashboard, start: float, end: float, step_s: float,
               scrape_interval_s: float) -> list[PanelData]:
    results = []
    for panel in board.panels():
        data = PanelData()
        for index, query in enumerate(panel.queries):
            expr = grafana_query(query.expr, step_s, scrape_interval_s, end - start)
            try:
                matrix = query_range(prometheus_url, expr, start, end, step_s)
            except ValueError as error:
                data.errors.append(f"{query.legend or 'query'}: {error}")
                continue
            for item in matrix:
                points = tuple((float(t), float(v)) for t, v in item["values"])
                data.series.append(Series(legend(query.legend, item["metric"], expr), points, item["metric"], index))
        results.append(data)
    return results


def write_preview(prometheus_url: str, boards: list[Dashboard], out: Path, ranges_s: list[int],
                  scrape_interval_s: float, now: float | None = None) -> dict[Path, list[str]]:
    """Write one page per dashboard; {page: titles of panels with no data or an error}."""
    end = now if now is not None else time.time()
    files = {board.uid: f"{board.uid}.html" for board in boards}
    empty: dict[Path, list[str]] = {}
    for board in boards:
        ranges = {}
        for range_s in ranges_s:
            step_s = max(1.0, math.ceil(range_s / POINTS_PER_CHART))
            data = panel_data(prometheus_url, board, end - range_s, end, step_s, scrape_interval_s)
            ranges[duration_label(range_s)] = (end - range_s, end, step_s, data)
        links = {other.title: files[other.uid] for other in boards if other.uid != board.uid}
        path = out / files[board.uid]
        write_atomically(path, page(board, ranges, links, prometheus_url))
        first = next(iter(ranges.values()))[3]
        empty[path] = [panel.title for panel, data in zip(board.panels(), first) if not data.series or data.errors]
    return empty


def run(args: argparse.Namespace, spec) -> int:
    from slo_sidecar.dashboards.definitions import dashboards

    out = Path(args.out)
    try:
        empty = write_preview(args.prometheus.rstrip("/"), dashboards(spec), out, args.ranges,
                              args.scrape_interval)
    except PreviewError as error:  # --prometheus names no Prometheus that answers
        print(f"slo-sidecar preview: error: --prometheus: {error}", file=sys.stderr)
        return 2
    for path, titles in empty.items():
        note = f" ({len(titles)} panels without data over the shortest range: {', '.join(titles)})" if titles else ""
        print(f"wrote {path}{note}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prometheus", required=True, type=http_url, help="Prometheus base URL, e.g. http://localhost:9090")
    parser.add_argument("--out", required=True, help="directory for the HTML pages")
    parser.add_argument("--slo", help="the SLO spec the dashboards come from (default: the embedded slo.yaml)")
    parser.add_argument("--ranges", type=lambda text: [parse_duration(p) for p in text.split(",")],
                        default=[900, 3600, 21600], help="time ranges to offer, comma-separated (default: 15m,1h,6h)")
    parser.add_argument("--scrape-interval", type=positive(float), default=15.0,
                        help="Prometheus's scrape interval in seconds, for $__rate_interval (default: 15)")
