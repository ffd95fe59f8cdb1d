"""A fleet of synthetic pods whose /metrics are a real pod's: the engine's and the sidecar's families,
names, labels and series count, captured from real processes (tests/fixtures/fleet/, see its README),
with each pod's traffic and failures drawn from a model that also knows the exact answer.

Pure: the model, the expositions it renders at a time, and the history it writes for backfilling. The
HTTP server and the Prometheus runs live in bench/fleet.py.

What moves: the SLI counters (`slo_engine_http_requests_total` of the base model's completions, 200 and
500, and `slo_engine_slo_requests_total`, good and not) follow each pod's request rate and its service's
error ratio, exactly; every other counter grows in proportion to the pod's requests (histograms stay
histograms); gauges keep the captured value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from slo_sidecar.spec.model import HTTP_REQUESTS, PROBE_MISSED, SLO_COUNTER

REPO = Path(__file__).resolve().parent.parent
TEMPLATE_DIR = REPO / "tests" / "fixtures" / "fleet"
TEMPLATE_SERVICE = "tiny-llama"  # the captured pod's served model name, replaced by each pod's service
SLI_FAMILIES = (HTTP_REQUESTS, SLO_COUNTER, PROBE_MISSED)
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")
_COUNTER_SUFFIXES = ("_total", "_count", "_sum", "_bucket")


@dataclass(frozen=True)
class Incident:
    """A share of one service's requests failing from start_s to end_s (unix seconds)."""

    service: str
    start_s: float
    end_s: float
    error_ratio: float


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    service: str
    rate_rps: float


@dataclass(frozen=True)
class Line:
    """One line of a captured exposition: a comment (kept as is) or a sample and how it moves."""

    text: str  # a comment, or the sample's `name{labels}` with the service put in
    kind: str  # comment, ok, error, scaled, gauge
    value: float = 0.0
    family: str = ""


@dataclass
class Fleet:
    pods: list[Pod]
    epoch_s: float  # when every counter was 0
    baseline_error_ratio: float = 0.0005
    incidents: list[Incident] = field(default_factory=list)

    # --- the model: what happened, exactly ---------------------------------------------------------
    def requests(self, pod: Pod, t: float) -> float:
        return pod.rate_rps * max(0.0, t - self.epoch_s)

    def errors(self, pod: Pod, t: float) -> float:
        """Failed requests of the pod by time t: the baseline share, plus each incident's over its overlap."""
        seconds = max(0.0, t - self.epoch_s) * self.baseline_error_ratio
        for incident in self.incidents:
            if incident.service == pod.service:
                overlap = max(0.0, min(t, incident.end_s) - max(self.epoch_s, incident.start_s))
                seconds += overlap * (incident.error_ratio - self.baseline_error_ratio)
        return pod.rate_rps * seconds

    def true_error_ratio(self, namespace: str, service: str, start_s: float, end_s: float) -> float:
        """The service's error ratio over (start, end], from the model: what every SLO value must equal."""
        pods = [p for p in self.pods if (p.namespace, p.service) == (namespace, service)]
        errors = sum(self.errors(p, end_s) - self.errors(p, start_s) for p in pods)
        total = sum(self.requests(p, end_s) - self.requests(p, start_s) for p in pods)
        return errors / total if total else 0.0

    def services(self) -> list[tuple[str, str]]:
        return sorted({(p.namespace, p.service) for p in self.pods})


def make_fleet(pods: int = 200, services: int = 5, namespaces: int = 2, epoch_s: float = 0.0,
               incidents: list[Incident] | None = None) -> Fleet:
    """`pods` pods, round robin over `services` services (service k in namespace k mod `namespaces`), each
    at 1 to 3 requests a second (a fixed spread, so runs compare)."""
    members = [Pod(f"svc-{i % services}-pod-{i // services}", f"ns-{(i % services) % namespaces}",
                   f"svc-{i % services}", 1.0 + (i * 7 % 11) / 5.0) for i in range(pods)]
    return Fleet(members, epoch_s, incidents=list(incidents or []))


# --- the captured pod --------------------------------------------------------------------------------

def _labels(text: str) -> dict[str, str]:
    return dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', text or ""))


def _classify(name: str, labels: dict[str, str]) -> str:
    base = labels.get("model") == TEMPLATE_SERVICE
    if name == HTTP_REQUESTS and base and labels.get("endpoint") == "/v1/completions":
        return {"200": "ok", "500": "error"}.get(labels.get("code", ""), "scaled")
    if name == SLO_COUNTER and base:
        return "ok" if labels.get("good") == "true" else "error"
    return "scaled" if name.endswith(_COUNTER_SUFFIXES) else "gauge"


def read_template(text: str) -> tuple[list[Line], float]:
    """(lines, the requests the captured pod had served): a sample's counters scale by requests / that."""
    lines, served = [], 0.0
    for raw in text.splitlines():
        if not raw.strip():
            continue
        if raw.startswith("#"):
            lines.append(Line(raw, "comment"))
            continue
        match = _SAMPLE.match(raw)
        if match is None:
            raise ValueError(f"not an exposition line: {raw!r}")
        name, label_text, value = match.group(1), match.group(2) or "", float(match.group(3))
        labels = _labels(label_text)
        kind = _classify(name, labels)
        if name == HTTP_REQUESTS and kind == "ok":
            served = value
        lines.append(Line(name + label_text, kind, value, name))
    return lines, served


@dataclass
class PodTemplate:
    """The captured engine's and sidecar's expositions, ready to render for any pod at any time."""

    engine: list[Line]
    sidecar: list[Line]
    served: float  # requests the captured engine had served when captured

    @classmethod
    def load(cls, directory: Path = TEMPLATE_DIR) -> "PodTemplate":
        engine, served = read_template((directory / "engine.prom").read_text())
        sidecar, _ = read_template((directory / "sidecar.prom").read_text())
        if served <= 0:
            raise ValueError(f"{directory / 'engine.prom'}: the captured pod served no requests to scale by")
        return cls(engine, sidecar, served)

    def series(self) -> tuple[int, int]:
        """(engine, sidecar) series a pod serves."""
        return (sum(line.kind != "comment" for line in self.engine),
                sum(line.kind != "comment" for line in self.sidecar))


def _value(fleet: Fleet, pod: Pod, line: Line, t: float, served: float) -> float:
    if line.kind == "ok":
        return fleet.requests(pod, t) - fleet.errors(pod, t)
    if line.kind == "error":
        return fleet.errors(pod, t)
    if line.kind == "scaled":
        return line.value * fleet.requests(pod, t) / served
    return line.value


def _for_pod(text: str, pod: Pod) -> str:
    return text.replace(f'"{TEMPLATE_SERVICE}"', f'"{pod.service}"')


def render(fleet: Fleet, template: PodTemplate, pod: Pod, part: str, t: float) -> str:
    """The pod's engine or sidecar /metrics at time t (text exposition format 0.0.4)."""
    lines = template.engine if part == "engine" else template.sidecar
    out = []
    for line in lines:
        if line.kind == "comment":
            out.append(line.text)
        else:
            out.append(f"{_for_pod(line.text, pod)} {_value(fleet, pod, line, t, template.served)!r}")
    return "\n".join(out) + "\n"


def target_labels(pod: Pod, part: str) -> dict[str, str]:
    """The labels Prometheus's Kubernetes discovery would attach to the pod's target (and the history's)."""
    return {"namespace": pod.namespace, "pod": pod.name, "instance": f"{pod.name}:{part}"}


def history(fleet: Fleet, template: PodTemplate, start_s: float, end_s: float, step_s: float,
            timestamp_scale: float = 1.0, families: tuple[str, ...] = SLI_FAMILIES) -> Iterator[str]:
    """The SLI families' samples of every pod from start to end, one line each with its timestamp (seconds
    for OpenMetrics, `timestamp_scale=1000` for milliseconds), family by family and series by series, with
    the labels a scrape would have given them (job and target labels): what the rules read, backfilled."""
    times = []
    t = start_s
    while t <= end_s:
        times.append(t)
        t += step_s
    for family in families:
        for part, lines in (("engine", template.engine), ("sidecar", template.sidecar)):
            chosen = [line for line in lines if line.family == family]
            for pod in fleet.pods if chosen else []:
                extra = ",".join(f'{k}="{v}"' for k, v in {"job": part, **target_labels(pod, part)}.items())
                for line in chosen:
                    name = _for_pod(line.text, pod)
                    series = name[:-1] + "," + extra + "}" if name.endswith("}") else name + "{" + extra + "}"
                    for t in times:
                        value = _value(fleet, pod, line, t, template.served)
                        stamp = f"{t * timestamp_scale:.0f}" if timestamp_scale != 1.0 else f"{t:.3f}"
                        yield f"{series} {value!r} {stamp}"
