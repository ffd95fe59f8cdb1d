"""Test helpers: process trees from /proc, and reading Prometheus expositions."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from slo_sidecar.sidecar.engine_processes import descendants as process_descendants, process_table
from slo_sidecar.app.processes import EngineProcess, free_port, http_get  # noqa: F401  (re-exported for tests)

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"  # what tests compare against; provenance in its README.md
VLLM_EXPOSITION = FIXTURES / "vllm-0.32.0-cpu-metrics.txt"  # a real vLLM 0.32.0 /metrics capture


def descendants(pid: int) -> set[int]:
    """All live descendant pids of pid, read from /proc."""
    return process_descendants(pid, process_table())


def nvml_loads() -> bool:
    """Whether this machine has an NVIDIA driver that NVML can load."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


def skip_if_nvml_loads() -> None:
    """Tests of the no-GPU path need a machine without an NVIDIA driver (an allowed skip)."""
    import pytest

    from tests.skip_policy import NVIDIA_DRIVER_PRESENT

    if nvml_loads():
        pytest.skip(NVIDIA_DRIVER_PRESENT)


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} from a Prometheus text exposition."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def metric(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    """Sum of the samples named `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(value for (sample, sample_labels), value in samples.items()
               if sample == name and wanted <= sample_labels)


def post_json(url: str, body: dict, timeout_s: float = 60.0, headers: dict[str, str] | None = None) -> dict:
    """POST a JSON body, return the JSON answer (HTTP errors raise)."""
    import json
    import urllib.request

    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.load(response)


def write_rule_files(spec, directory: Path) -> list[Path]:
    """The spec's generated Prometheus rule files, written into directory: their paths."""
    from slo_sidecar.alerts.render import render

    paths = []
    for name, text in render(spec).items():
        if name.endswith(".rules.yaml"):
            (directory / name).write_text(text)
            paths.append(directory / name)
    return paths


def promtool_counter(increases: list[float]) -> str:
    """promtool's expanding notation for a counter at 0 in minute 0 that grows by increases[m] in minute m
    (increases[0] is ignored): segments `start+step x n`, each n+1 samples, one a minute.

    promtool expands a segment by adding the step n times, in float64; each segment's last value is
    worked out here the same way, so the next segment starts exactly where promtool ends the last (a start
    a rounding below it would read as a counter reset) and every number is written in full (repr)."""
    segments, value, first = [], 0.0, 0
    while first < len(increases):
        step = increases[first + 1] if first + 1 < len(increases) else 0.0
        last = first
        while last + 1 < len(increases) and increases[last + 1] == step:
            last += 1
        segments.append(f"{value!r}+{float(step)!r}x{last - first}")
        for _ in range(last - first):  # this segment's last sample, as promtool adds it up
            value += step
        first = last + 1
        if first < len(increases):
            value += increases[first]  # the next segment's first, a minute later
    return " ".join(segments)
