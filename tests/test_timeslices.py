"""Time-slice SLOs: the spec's `timeslices` SLI, its errors, and its rules replayed through Prometheus's own rule
engine (promtool) and a real Prometheus (the lab's backfilled replay), against minutes worked out here.

Two SLOs of one service (namespace `a`), 1-minute slices, one verdict a minute:

- gpu-busy: 90% of minutes with the GPUs' average utilisation at 0.8 or more; ticket only (a budget of 10% of
  minutes: the pages' 14.4x and 6x would need over 100%). The gauge reads 0.9 until minute 120, then 0.1. A
  slice judges the samples of its minute: good up to minute 119, bad from 120 (0.9, 0.9, 0.9, 0.1 average
  0.7). The verdicts start at minute 0, so at minute t >= 120 the 3-day and 6-hour windows hold t + 1 slices,
  t - 119 of them bad. The 1x ticket (over 0.1 on both): (t - 119) / (t + 1) > 0.1 from t = 133 (132.3); its
  guard, ceil(1 / 0.1) = 10 slices, long met. With `for: 10m`, it fires at minute 143 (the 3x tier would
  wait until 171).
- ttft-p99: 99% of minutes with the p99 of vLLM's TTFT histogram at 0.5 s or less; page and ticket. 10
  requests a second, all under 0.25 s until minute 60, then all between 0.5 s and 1 s. A slice's p99 reads
  the minute before it: good from minute 1 (the first with a rate; no data before it is left out) to 60, bad
  from 61. Two pages race. The 6x page (over 0.06 on 6 hours and 30 minutes, at least ceil(1 / 0.06) = 17
  slices in the 6 hours): the 6 hours hold all t slices, t - 60 bad, over 0.06 from t = 64 (63.8); the 30
  minutes (30 or 31 slices: Prometheus 3 counts one end, 2 both) pass 0.06 at t = 62. The 14.4x page needs the
  hour (60 or 61 slices) over 0.144: t = 69. So the page is the 6x one's: pending at 64, `for: 1m`, firing at 65.
  The ticket: 3x (over 0.03 on 1 day and 2 hours, 34 slices) holds from (t - 60) / t > 0.03, t = 62; 1x would
  hold from t = 61 but its guard, 100 slices, waits until t = 100. With `for: 10m`: minute 72.

Each group reads the one before it at the same evaluation here (`group_eval_order`): a live Prometheus, whose
groups run apart, may show each crossing up to one evaluation later per group.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time

import pytest
import yaml

from slo_sidecar.alerts.render import render
from slo_sidecar.app.lab.replay import Series, replay
from slo_sidecar.dashboards.definitions import slo_overview
from slo_sidecar.dashboards.model import expand
from slo_sidecar.spec.load import DEFAULT_SPEC, SpecError, parse_spec
from tests.test_rules import needs_promtool

SPEC = """version: slo-sidecar/v1
service: llm
identity: [namespace]
slos:
  - name: gpu-busy
    objective: 90
    alerting: {page: {enabled: false}}
    sli:
      timeslices:
        good: ">= 0.8"
        gauge: {metric: sidecar_gpu_utilization_ratio}
  - name: ttft-p99
    objective: 99
    sli:
      timeslices:
        good: "<= 0.5"
        quantile: {q: 0.99, measure: ttft}
"""
GPU_TICKET_MIN, TTFT_PAGE_MIN, TTFT_TICKET_MIN = 143, 65, 72
STEP_S = 15  # the samples' interval: 4 to a slice
MINUTES = 180


def gauge_values() -> str:
    """0.9 at every sample up to minute 120 (exclusive), 0.1 from it."""
    good, bad = 120 * 60 // STEP_S, (MINUTES - 120) * 60 // STEP_S
    return f"0.9x{good - 1} 0.1x{bad}"


def bucket_values(bound: str) -> str:
    """10 requests a second: under 0.25 s until minute 60, then between 0.5 s and 1 s (`le` of 1 and +Inf
    only grow)."""
    per_sample, samples = 10 * STEP_S, MINUTES * 60 // STEP_S
    if bound in ("1", "+Inf"):
        return f"0+{per_sample}x{samples}"
    healthy = 60 * 60 // STEP_S
    return f"0+{per_sample}x{healthy} {per_sample * healthy}+0x{samples - healthy}"


def alert_test(alert: str, tier: str, minute: int, firing: bool) -> dict:
    """ALERTS for the alert at the minute: firing, or not firing (pending or nothing)."""
    labels = {"__name__": "ALERTS", "alertname": alert, "alertstate": "firing", "namespace": "a",
              "severity": "critical" if tier == "page" else "warning", "sloth_severity": tier, "tier": tier,
              **sloth(alert)}
    return {"expr": f'ALERTS{{alertname="{alert}", alertstate="firing", tier="{tier}"}}', "eval_time": f"{minute}m",
            "exp_samples": [{"labels": "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}",
                             "value": 1}] if firing else []}


def sloth(alert: str) -> dict[str, str]:
    slo = {"GpuBusySLO": "gpu-busy", "TtftP99SLO": "ttft-p99"}[alert]
    return {"sloth_id": f"llm-{slo}", "sloth_service": "llm", "sloth_slo": slo}


def verdict_test(slo: str, minute: int, value: int) -> dict:
    labels = {"__name__": "slo:timeslice_good:bool", "namespace": "a", "sloth_id": f"llm-{slo}",
              "sloth_service": "llm", "sloth_slo": slo, "sloth_window": "1m"}
    return {"expr": f'slo:timeslice_good:bool{{sloth_slo="{slo}"}}', "eval_time": f"{minute}m",
            "exp_samples": [{"labels": "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}",
                             "value": value}]}


@needs_promtool
def test_time_slice_alerts_fire_on_the_minute_the_slice_arithmetic_says(tmp_path):
    files = render(parse_spec(SPEC, "slo.yaml"))
    names = sorted(name for name in files if name.endswith(".rules.yaml"))
    for name in names:
        (tmp_path / name).write_text(files[name])
    series = [{"series": 'sidecar_gpu_utilization_ratio{namespace="a", gpu="0"}', "values": gauge_values()}]
    for bound in ("0.25", "0.5", "1", "+Inf"):
        series.append({"series": f'vllm:time_to_first_token_seconds_bucket{{namespace="a", le="{bound}"}}',
                       "values": bucket_values(bound)})
    tests = [alert_test("GpuBusySLO", "ticket", GPU_TICKET_MIN - 1, False),
             alert_test("GpuBusySLO", "ticket", GPU_TICKET_MIN, True),
             alert_test("TtftP99SLO", "page", TTFT_PAGE_MIN - 1, False),
             alert_test("TtftP99SLO", "page", TTFT_PAGE_MIN, True),
             alert_test("TtftP99SLO", "ticket", TTFT_TICKET_MIN - 1, False),
             alert_test("TtftP99SLO", "ticket", TTFT_TICKET_MIN, True)]
    # The slice verdicts themselves: the gauge's minute 119 good, 120 bad; TTFT's 60 good, 61 bad.
    promql = [verdict_test(slo, minute, value) for slo, minute, value in (
        ("gpu-busy", 119, 1), ("gpu-busy", 120, 0), ("ttft-p99", 60, 1), ("ttft-p99", 61, 0))]
    order = [f"sloth-slo-{kind}-llm-{slo}" for slo in ("gpu-busy", "ttft-p99")
             for kind in ("timeslices", "sli-recordings", "alerts")]
    test = {"rule_files": names, "evaluation_interval": "1m", "group_eval_order": order,
            "tests": [{"interval": f"{STEP_S}s", "input_series": series, "promql_expr_test": [*tests, *promql]}]}
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test, sort_keys=False))
    result = subprocess.run(["promtool", "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]


def replayed_series(start: float) -> list[Series]:
    """The same histories as the promtool test's, as a scraped target's samples from `start`."""
    times = [start + k * STEP_S for k in range(MINUTES * 60 // STEP_S + 1)]
    gauge = [(t, 0.9 if t - start < 120 * 60 else 0.1) for t in times]
    series = [Series("sidecar_gpu_utilization_ratio", {"namespace": "a", "gpu": "0"}, "gauge", gauge)]
    for bound in ("0.25", "0.5", "1", "+Inf"):
        grows_until = math.inf if bound in ("1", "+Inf") else 60 * 60
        samples = [(t, 10.0 * min(t - start, grows_until)) for t in times]
        series.append(Series("vllm:time_to_first_token_seconds_bucket", {"namespace": "a", "le": bound}, "counter",
                             samples))
    return series


@needs_promtool
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Prometheus (Debian package) not installed")
def test_a_real_prometheus_fires_them_on_the_same_minutes(tmp_path):
    """The lab's replay: the histories backfilled into a real Prometheus's TSDB, the recording rules backfilled
    level by level by promtool against it, the alerts evaluated with query_range every minute. Each alert fires
    on its minute or up to two steps later: the backfill evaluates each group at an offset hashed from its
    file's path (up to a minute), and the alerts are read on whole minutes from the start."""
    files = render(parse_spec(SPEC, "slo.yaml"))
    rules = []
    for name in sorted(n for n in files if n.endswith(".rules.yaml")):
        (tmp_path / name).write_text(files[name])
        rules.append(tmp_path / name)
    start = math.floor(time.time() / 3600) * 3600 - 6 * 3600
    # The SLO dashboard's slice strip, as Grafana sends its query, before and after the GPU's slices turn bad.
    spec = parse_spec(SPEC, "slo.yaml")
    strip = next(panel for title, panels in slo_overview(spec).rows if title.startswith("gpu-busy")
                 for panel in panels if panel.kind == "state-timeline")
    query = expand(strip.queries[0].expr)
    instants = ((query, start + 110 * 60), (query, start + 130 * 60))
    # The strip reads the once-a-minute verdicts at an instant: a lookback of a slice and a second finds the last
    # one, as a live Prometheus's 5-minute lookback does (the replay's own, 16 s here, is a scrape's).
    replayed = replay(replayed_series(start), rules, start, start + MINUTES * 60, tmp_path / "replay", step_s=60,
                      scrape_interval_s=STEP_S, instants=instants, lookback_s=61)
    strip_values = [[float(sample["value"][1]) for sample in replayed.values[instant]] for instant in instants]
    assert strip_values == [[1.0], [0.0]], strip_values
    first = {}
    for firing in replayed.firings:
        key = (firing.alert, firing.labels.get("tier"))
        first[key] = min(first.get(key, math.inf), (firing.start - start) / 60)
    assert set(first) == {("GpuBusySLO", "ticket"), ("TtftP99SLO", "page"), ("TtftP99SLO", "ticket")}, first
    assert GPU_TICKET_MIN <= first[("GpuBusySLO", "ticket")] <= GPU_TICKET_MIN + 2, first
    assert TTFT_PAGE_MIN <= first[("TtftP99SLO", "page")] <= TTFT_PAGE_MIN + 2, first
    assert TTFT_TICKET_MIN <= first[("TtftP99SLO", "ticket")] <= TTFT_TICKET_MIN + 2, first


def test_a_condition_reads_with_or_without_a_space():
    for good, condition in (('">=0.8"', ">= 0.8"), ('"<  2e-1"', "< 0.2")):
        spec = parse_spec(SPEC.replace('">= 0.8"', good), "slo.yaml")
        assert spec.slos[0].sli.timeslices.condition == condition


def test_the_schema_takes_a_time_slice_spec():
    import jsonschema

    schema = json.loads((DEFAULT_SPEC.parent / "slo.schema.json").read_text())
    jsonschema.validate(yaml.safe_load(SPEC), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(yaml.safe_load(SPEC.replace('">= 0.8"', '"at least 0.8"')), schema)


@pytest.mark.parametrize("sli, reason", [
    ("{good: '>= 0.8'}", "expected exactly one of gauge, ratio, quantile"),
    ("{good: 'at least 0.8', gauge: {metric: g}}", "expected a comparison and a number"),
    ("{good: '>= 0.8', slice: 5s, gauge: {metric: g}}", "expected a duration from 10s to 1h"),
    ("{good: '>= 0.8', no_data: ignore, gauge: {metric: g}}", "no_data: expected one of bad, excluded"),
    ("{good: '>= 0.8', gauge: {metric: g, aggregate: sum}}", "gauge.aggregate: expected one of avg, min, max"),
    ("{good: '<= 0.5', quantile: {q: 1.5, measure: ttft}}", "quantile.q: expected a quantile"),
    ("{good: '<= 0.5', quantile: {q: 0.99}}", "expected `measure`"),
])
def test_a_bad_time_slice_sli_names_its_field_and_the_reason(sli, reason):
    text = SPEC.split("  - name: ttft-p99")[0].replace("""      timeslices:
        good: ">= 0.8"
        gauge: {metric: sidecar_gpu_utilization_ratio}""", f"      timeslices: {sli}")
    with pytest.raises(SpecError) as raised:
        parse_spec(text, "slo.yaml")
    assert reason in str(raised.value) and "slos[0].sli.timeslices" in str(raised.value), raised.value
