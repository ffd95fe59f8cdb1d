"""The metrics reference (docs/metrics.md), from the families themselves: their names, types, labels and
help strings as the engine and the sidecar serve them, so the tables cannot drift from the code.

The engine's families come from its own registry objects; the sidecar's from the process's wiring
(sidecar/app.py `wire`) fed one synthetic engine scrape, one poll of a FAKE GPU and the probes' figures,
so every family it can serve is there.
"""

from __future__ import annotations

import asyncio
import time
from typing import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from slo_sidecar.engine.metrics import ServerMetrics
from slo_sidecar.engine.slo_judge import SloJudge
from slo_sidecar.engine.tracing import DropCounter
from slo_sidecar.sidecar import engine_snapshot as snapshot
from slo_sidecar.sidecar.app import wire
from slo_sidecar.sidecar.config import SidecarConfig
from slo_sidecar.spec.golden import GoldenBaseline, ItemVerdict, load_golden_set
from slo_sidecar.spec.load import DEFAULT_SPEC, load_spec
from slo_sidecar.spec.model import SLO_COUNTER

MODEL = "tiny-llama"
IDENTITY = f'namespace="demo",model_name="{MODEL}"'


def engine_families() -> list[Metric]:
    registry = CollectorRegistry()
    spec = load_spec(str(DEFAULT_SPEC))
    ServerMetrics(registry, max_waiting_requests=1, models=(MODEL,))
    SloJudge(spec, registry, (MODEL,))
    DropCounter(registry)
    return list(registry.collect())


def synthetic_scrape(requests: int) -> str:
    """An engine exposition with every series the sidecar reads, `requests` finished so far."""
    lines = [f'process_start_time_seconds {1.7e9}', f'slo_engine_accelerator_info{{{IDENTITY},uuid="GPU-0"}} 1']
    lines += [f'{name}{{{IDENTITY}}} 1' for name in snapshot.GAUGES.values()]
    lines += [f'{name}{{{IDENTITY}}} {requests}' for name in snapshot.COUNTERS.values()]
    for family in snapshot.HISTOGRAMS.values():
        lines += [f'{family}_bucket{{{IDENTITY},le="{le}"}} {requests}' for le in ("0.1", "1.0", "+Inf")]
        lines += [f'{family}_sum{{{IDENTITY}}} {requests * 0.05}', f'{family}_count{{{IDENTITY}}} {requests}']
    lines += [f'{name}{{{IDENTITY},model="{MODEL}"}} {requests}' for name in snapshot.TENANT_COUNTERS]
    lines.append(f'{snapshot.HTTP_REQUESTS}{{{IDENTITY},endpoint="/v1/completions",code="200",model="{MODEL}"}} '
                 f'{requests}')
    lines += [f'{SLO_COUNTER}{{{IDENTITY},slo="{slo}",good="true",model="{MODEL}"}} {requests}'
              for slo in ("ttft", "e2e-latency", "queue-time", "goodput")]
    return "\n".join(lines) + "\n"


def sidecar_families() -> list[Metric]:
    golden = load_golden_set()
    baseline = GoldenBaseline(MODEL, golden.fingerprint, tuple(-7.6 for _ in golden.items))
    config = SidecarConfig(fake_gpu=1, gpu_scope="all", gpu_hourly_usd=2.0, capacity_rps=4.0, pod="demo-0",
                           namespace="demo", container="engine", golden=baseline)
    wiring = wire(config, load_spec(str(DEFAULT_SPEC)))
    states = wiring.sidecar.states
    for requests in (10, 20):
        states["engine"].families = wiring.engine.take(synthetic_scrape(requests))
    states["gpu"].families = asyncio.run(wiring.gpu.poll())
    if wiring.prober is not None:
        states["probe"].families = wiring.prober.families(wiring.tracker.service_identity() or {})
    if wiring.golden is not None:  # one probe, scored as its baseline
        wiring.golden.record(ItemVerdict(0, -7.6, -7.6, 0.001))
        states["golden"].families = wiring.golden.families(wiring.tracker.service_identity() or {})
    for name, state in states.items():  # as after each poller's first run
        state.last_success = time.time()
        wiring.sidecar.duration.labels(name).set(0.0)
    return list(wiring.exposition.collect())


def _served_name(family: Metric) -> str:
    return family.name + "_total" if family.type == "counter" else family.name


def table(families: Iterable[Metric], prefixes: tuple[str, ...]) -> str:
    """One row per family served under `prefixes`; its labels are those its series carry ("-": none yet)."""
    labels: dict[str, set[str]] = {}
    rows: dict[str, tuple[str, str]] = {}
    for family in families:
        name = _served_name(family)
        if not name.startswith(prefixes):
            continue
        labels.setdefault(name, set()).update(label for sample in family.samples for label in sample.labels)
        rows.setdefault(name, (family.type, " ".join(family.documentation.split()).replace("|", "\\|")))
    lines = ["| metric | type | labels | what it is |", "| --- | --- | --- | --- |"]
    for name, (kind, help_text) in sorted(rows.items()):
        names = ", ".join(f"`{label}`" for label in sorted(labels[name] - {"le", "quantile"})) or "-"
        lines.append(f"| `{name}` | {kind} | {names} | {help_text} |")
    return "\n".join(lines) + "\n"


def markdown() -> str:
    return f"""# Metrics reference

Generated from the families themselves (`python -m slo_sidecar.app.docs`; `tests/test_docs.py` fails
while this page is stale): every family the engine and the sidecar serve, with its type, its labels
and its help string. Counters are shown with the `_total` their samples carry. The engine's `/metrics`
also serves vLLM's own `vllm:*` series, and every engine series carries `model_name` (added at
exposition); the sidecar adds prometheus_client's `process_*` and `python_*`.

## The engine (`slo_engine_*`)

{table(engine_families(), ("slo_engine_",))}
## The sidecar (`sidecar_*`, `slo_*`, `gpu_*`)

Shown as a pod with one FAKE GPU, a GPU price and a capacity report serves them; the `DCGM_FI_*` names
of `dcgm_compat` are left out.

{table(sidecar_families(), ("sidecar_", "slo_", "gpu_"))}"""

