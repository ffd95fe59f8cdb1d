"""The capacity report as a chart: each SLO's attainment against offered rate, its objective, the capacity.

One drawing, two formats: SVG by hand (text, for the docs and browsers) and
PNG through Pillow (already a dependency of vLLM). Pure but for the file write.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slo_sidecar.iokit.files import write_atomically
from slo_sidecar.spec.capacity_report import CapacityReport

WIDTH, HEIGHT = 720, 400
LEFT, RIGHT, TOP, BOTTOM = 64, 150, 30, 44
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


@dataclass(frozen=True)
class Line:
    name: str
    colour: str
    points: tuple[tuple[float, float], ...]  # (rate, attainment 0-1)
    objective: float  # 0-1


@dataclass(frozen=True)
class Chart:
    lines: tuple[Line, ...]
    x_max: float
    y_min: float
    capacity: float | None

    def x(self, rate: float) -> float:
        return LEFT + (WIDTH - LEFT - RIGHT) * rate / self.x_max

    def y(self, share: float) -> float:
        return TOP + (HEIGHT - TOP - BOTTOM) * (1 - (share - self.y_min) / (1 - self.y_min))


def chart_of(report: CapacityReport) -> Chart:
    """Each SLO judged with numbers (the engine's counters) as a line; the y axis reaches down to the lowest
    attainment or objective, so a 99.9% objective is not a hair under 100%."""
    names = sorted({name for step in report.steps for name, slo in step.slos.items() if slo.attainment is not None})
    lines = []
    for i, name in enumerate(names):
        points = tuple((step.rate_rps, step.slos[name].attainment) for step in report.steps
                       if name in step.slos and step.slos[name].attainment is not None)
        objective = next(step.slos[name].objective for step in report.steps if name in step.slos) / 100
        lines.append(Line(name, PALETTE[i % len(PALETTE)], points, objective))  # type: ignore[arg-type]
    lowest = min([*(v for line in lines for _, v in line.points), *(line.objective for line in lines), 0.9])
    rates = [step.rate_rps for step in report.steps] or [1.0]
    return Chart(tuple(lines), max(rates) * 1.1, max(0.0, lowest - (1 - lowest) * 0.1), report.capacity_rps)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    return [low + (high - low) * i / count for i in range(count + 1)]


def svg(chart: Chart) -> str:
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
             f'height="{HEIGHT}" font-family="sans-serif" font-size="12">',
             f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>']
    for share in _ticks(chart.y_min, 1.0):
        y = chart.y(share)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#ddd"/>'
                     f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{share:.1%}</text>')
    for rate in _ticks(0.0, chart.x_max):
        x = chart.x(rate)
        parts.append(f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{rate:.3g}</text>')
    parts.append(f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 8}" text-anchor="middle">offered load, '
                 f'requests/s (Poisson arrivals)</text>'
                 f'<text x="14" y="{TOP - 12}">share of events within the SLO</text>')
    for i, line in enumerate(chart.lines):
        y = chart.y(line.objective)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="{line.colour}" '
                     f'stroke-dasharray="5 4" stroke-width="1"/>')
        path = " ".join(f"{chart.x(r):.1f},{chart.y(max(v, chart.y_min)):.1f}" for r, v in line.points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{line.colour}" stroke-width="2"/>')
        parts.extend(f'<circle cx="{chart.x(r):.1f}" cy="{chart.y(max(v, chart.y_min)):.1f}" r="3" '
                     f'fill="{line.colour}"/>' for r, v in line.points)
        ly = TOP + 16 * i
        parts.append(f'<line x1="{WIDTH - RIGHT + 10}" y1="{ly}" x2="{WIDTH - RIGHT + 28}" y2="{ly}" '
                     f'stroke="{line.colour}" stroke-width="2"/><text x="{WIDTH - RIGHT + 32}" y="{ly + 4}">'
                     f'{line.name} (&gt;= {line.objective:.2%})</text>')
    if chart.capacity is not None:
        x = chart.x(chart.capacity)
        parts.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{HEIGHT - BOTTOM}" stroke="black" '
                     f'stroke-width="1.5"/><text x="{x + 4:.1f}" y="{TOP + 12}">capacity {chart.capacity:.3g}/s</text>')
    parts.append("</svg>\n")
    return "".join(parts)


def png(chart: Chart, path: Path) -> None:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    for share in _ticks(chart.y_min, 1.0):
        y = chart.y(share)
        draw.line([(LEFT, y), (WIDTH - RIGHT, y)], fill="#dddddd")
        draw.text((4, y - 6), f"{share:.1%}", fill="black")
    for rate in _ticks(0.0, chart.x_max):
        draw.text((chart.x(rate) - 8, HEIGHT - BOTTOM + 6), f"{rate:.3g}", fill="black")
    draw.text((LEFT, HEIGHT - 16), "offered load, requests/s (Poisson arrivals)", fill="black")
    for i, line in enumerate(chart.lines):
        y = chart.y(line.objective)
        for x0 in range(LEFT, WIDTH - RIGHT, 9):
            draw.line([(x0, y), (min(x0 + 5, WIDTH - RIGHT), y)], fill=line.colour)
        points = [(chart.x(r), chart.y(max(v, chart.y_min))) for r, v in line.points]
        if len(points) > 1:
            draw.line(points, fill=line.colour, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=line.colour)
        ly = TOP + 16 * i
        draw.line([(WIDTH - RIGHT + 10, ly), (WIDTH - RIGHT + 28, ly)], fill=line.colour, width=2)
        draw.text((WIDTH - RIGHT + 32, ly - 6), f"{line.name} (>= {line.objective:.2%})", fill="black")
    if chart.capacity is not None:
        x = chart.x(chart.capacity)
        draw.line([(x, TOP), (x, HEIGHT - BOTTOM)], fill="black", width=2)
        draw.text((x + 4, TOP), f"capacity {chart.capacity:.3g}/s", fill="black")
    temporary = path.with_name(f".{path.name}.tmp")
    image.save(temporary, format="PNG")
    temporary.replace(path)


def write_chart(report: CapacityReport, path: Path) -> None:
    chart = chart_of(report)
    if path.suffix.lower() == ".png":
        png(chart, path)
    else:
        write_atomically(path, svg(chart))
