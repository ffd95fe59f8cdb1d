"""The dashboard preview: numbers in Grafana's units, charts from series, and pages a real browser draws."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
import time

import pytest

from slo_sidecar.dashboards.definitions import dashboards, gpu
from slo_sidecar.dashboards.model import Panel, Query
from slo_sidecar.dashboards.preview import PALETTE, PanelData, Series, format_value, page, table_rows, timeseries_svg, y_range
from slo_sidecar.app.preview import grafana_query, legend
from slo_sidecar.app.processes import PrometheusProcess, SidecarProcess, free_port
from slo_sidecar.spec.load import DEFAULT_SPEC, load_spec

SPEC = load_spec(str(DEFAULT_SPEC))


@pytest.mark.parametrize(("value", "unit", "shown"), [
    (0.25, "s", "250 ms"), (12, "s", "12 s"), (90, "s", "1.5 min"), (0.031, "percentunit", "3.1%"),
    (80 * 1024**3, "bytes", "80 GiB"), (1.41e9, "hertz", "1.41 GHz"), (350, "watt", "350 W"),
    (65, "celsius", "65 °C"), (4, "currencyUSD", "$4.00"), (1234, "short", "1.23 k"), (2.5, "reqps", "2.5 req/s"),
    (math.nan, "s", "NaN"),
])
def test_values_read_in_the_panels_unit(value, unit, shown):
    assert format_value(value, unit) == shown


def test_rate_interval_is_grafanas():
    # Grafana: max(step + scrape interval, 4 x scrape interval).
    assert grafana_query("rate(x[$__rate_interval])", step_s=4, scrape_interval_s=15) == "rate(x[60s])"
    assert grafana_query("rate(x{pod=~\"$pod\"}[$__rate_interval])", 90, 15) == 'rate(x{pod=~".*"}[105s])'
    assert grafana_query("increase(x[$__range])", 10, 2, range_s=900) == "increase(x[900s])"


def test_legends_fill_labels_or_show_the_series():
    assert legend("gpu {{gpu}}", {"gpu": "0", "pod": "p"}, "e") == "gpu 0"
    assert legend("", {"__name__": "up", "job": "a"}, "e") == '{job="a"}'
    assert legend("__auto", {}, "sum(x)") == "sum(x)"


PANEL = Panel("Queue", "q", (Query("x"),), "short", thresholds=((10, "red"),), threshold_lines=True, min=0)


def test_axis_makes_room_for_the_threshold_line():
    low, high = y_range(PANEL, [Series("a", ((0, 1.0), (1, 2.0)))])
    assert low == 0 and high >= 10
    svg = timeseries_svg(PANEL, PanelData([Series("a", ((0, 1.0), (1, 2.0)))]), 0, 1, 1)
    assert svg.count('class="threshold"') == 1


def test_lines_break_at_missing_values_and_gaps():
    points = ((0, 1.0), (10, 2.0), (20, math.nan), (30, 1.0), (40, 1.5), (200, 1.0), (210, 2.0))
    svg = timeseries_svg(PANEL, PanelData([Series("a", points)]), 0, 210, 10)
    assert svg.count("<polyline") == 3
    assert "No data" in timeseries_svg(PANEL, PanelData(), 0, 210, 10)


def test_page_has_every_panel_for_every_range_and_a_stat_coloured_by_threshold():
    board = gpu(SPEC)
    series = [Series("gpu 0", ((0, 0.5), (60, 0.6)))]
    ranges = {label: (0.0, 60.0, 1.0, [PanelData(list(series)) for _ in board.panels()]) for label in ("1m", "5m")}
    text = page(board, ranges, {"Other": "other.html"}, "http://prometheus")
    assert text.count('class="panel') == 2 * len(board.panels())
    assert text.count('<option value=') == 2 and 'href="other.html"' in text
    stat = Panel("Firing", "f", (Query("x"),), "short", "stat", thresholds=((1, "red"),))
    firing = page(board.__class__("u", "t", "d", (("r", (stat,)),)), {"1m": (0, 60, 1, [PanelData(
        [Series("a", ((0, 2.0),))])])}, {}, "p")
    assert 'color:#f2495c">2<' in firing


def test_a_table_is_one_row_per_label_set_sorted_worst_first():
    """The Tenants table as Grafana merges it: its instant queries joined on (SLO, tenant)."""
    columns = (Query("objective", "Objective"), Query("budget", "Budget left"), Query("cost", "Cost", unit="currencyUSD"))
    table = Panel("SLOs by tenant", "t", columns, "percentunit", "table",
                  label_columns=(("sloth_slo", "SLO"), ("model", "Tenant")), sort_by="Budget left")

    def value(query: int, slo: str, model: str, number: float) -> Series:
        return Series("", ((0, number),), {"sloth_slo": slo, "model": model}, query)

    data = PanelData([value(0, "availability", "legal", 0.99), value(0, "availability", "medical", 0.999),
                      value(1, "availability", "medical", 1.0), value(1, "availability", "legal", -2.5),
                      value(2, "availability", "legal", 4.0), value(0, "ttft", "other", 0.99)])
    assert table_rows(table, data) == [
        ["availability", "legal", "99%", "-250%", "$4.00"],  # least budget left first
        ["availability", "medical", "99.9%", "100%", ""],
        ["ttft", "other", "99%", "", ""],  # no budget yet: last
    ]
    text = page(gpu(SPEC).__class__("u", "t", "d", (("Tenants", (table,)),)), {"1m": (0, 60, 1, [data])}, {}, "p")
    assert text.count("<tr>") == 4 and "<th>Budget left</th>" in text


def test_a_table_sorted_descending_puts_the_highest_first_and_empty_cells_last():
    """The fleet table: highest burn first."""
    columns = (Query("burn", "Burn now", unit="short"), Query("budget", "Budget left"))
    table = Panel("Burn rate by service and SLO", "t", columns, "percentunit", "table",
                  label_columns=(("namespace", "Namespace"), ("model_name", "Service model")), sort_by="Burn now",
                  sort_desc=True)

    def value(query: int, namespace: str, number: float) -> Series:
        return Series("", ((0, number),), {"namespace": namespace, "model_name": "llama"}, query)

    data = PanelData([value(0, "a", 0.5), value(0, "b", 16.0), value(0, "c", 2.0), value(1, "d", 0.9)])
    assert table_rows(table, data) == [["b", "llama", "16", ""], ["c", "llama", "2", ""], ["a", "llama", "0.5", ""],
                                       ["d", "llama", "", "90%"]]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(not shutil.which("prometheus"), reason="needs Debian's prometheus package")
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (scripts/setup.sh installs it)")
def test_preview_pages_draw_in_headless_chromium(tmp_path):
    from PIL import Image

    dead_engine = f"http://127.0.0.1:{free_port()}"  # the engine panels read "No data"; the GPU ones draw
    with SidecarProcess(tmp_path / "sidecar.log", dead_engine, "--fake-gpu", "2", "--gpu-scope", "all",
                        "--gpu-interval-s", "1",
                        "--gpu-hourly-usd", "4").start() as sidecar:
        sidecar.wait_ready()
        with PrometheusProcess(tmp_path, {"sidecar": sidecar.url.removeprefix("http://")}, []).start() as prometheus:
            prometheus.wait_ready()
            deadline = time.monotonic() + 60
            while len(prometheus.query("sidecar_gpu_temperature_celsius")) < 2 or time.monotonic() < deadline - 50:
                assert time.monotonic() < deadline, "Prometheus never scraped the sidecar"
                time.sleep(1)
            out = tmp_path / "preview"
            result = subprocess.run([sys.executable, "-m", "slo_sidecar.app.cli", "preview", "--prometheus",
                                     prometheus.url, "--out", str(out), "--ranges", "1m,1h", "--scrape-interval", "1"],
                                    capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    pages = sorted(path.name for path in out.glob("*.html"))
    assert pages == sorted(f"{board.uid}.html" for board in dashboards(SPEC)), pages
    gpu_page = out / f"{gpu(SPEC).uid}.html"
    lines = {line.split()[1]: line for line in result.stdout.splitlines()}
    assert lines[str(gpu_page)] == f"wrote {gpu_page}"  # every GPU panel has data from the fake GPUs
    engine_page = str(out / f"{dashboards(SPEC)[1].uid}.html")
    assert "panels without data" in lines[engine_page] and "Time to first token" in lines[engine_page]
    drawn = [int(n) for n in re.findall(r'data-series="(\d+)"', gpu_page.read_text())]
    assert sum(1 for n in drawn if n >= 2) >= 8, drawn  # two fake GPUs: two series on most panels, both ranges

    shot = tmp_path / "gpu.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1400,1800", "--virtual-time-budget=3000",
                    gpu_page.as_uri()], capture_output=True, timeout=120, check=True)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 1800)
    counts = image.getcolors(maxcolors=1 << 20)
    wanted = {tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5)) for colour in PALETTE[:2]}
    line_pixels = sum(count for count, rgb in counts if rgb in wanted)
    # The range picker's script shows one range; without it nothing draws and these pixels are absent.
    assert line_pixels > 2000, f"only {line_pixels} pixels in the series colours: the charts did not draw"
