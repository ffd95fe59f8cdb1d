"""The SLO spec: the default parses, bad specs name file, line, field and reason, Sloth specs read the same."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
import sys

import pytest
from hypothesis import given, strategies as st
from prometheus_client.utils import floatToGoString

from slo_sidecar.spec.buckets import KNOWN_BUCKETS
from slo_sidecar.spec.load import DEFAULT_SPEC, SpecError, load_spec, parse_spec
from slo_sidecar.spec.model import PROBE_MISSED, Matcher, client_le, duration_label, duration_seconds, event_guard
from tests.helpers import REPO, VLLM_EXPOSITION

HEAD = "version: slo-sidecar/v1\nservice: llm\nslos:\n"
AVAILABILITY = """  - name: availability
    objective: 99.9
    sli:
      availability:
        errors: {metric: slo_engine_http_requests_total, matchers: ['code=~"5.."']}
        total: {metric: slo_engine_http_requests_total}
"""


def test_the_default_spec():
    spec = load_spec(str(DEFAULT_SPEC))
    assert [slo.name for slo in spec.slos] == ["availability", "ttft", "e2e-latency", "queue-time", "goodput",
                                               "correctness", "gpu-utilization"]
    gpu = spec.slos[-1]  # the reference design's "GPU utilisation above 80%": minutes, tickets only, no freeze
    assert gpu.sli.timeslices is not None and gpu.sli.timeslices.condition == "> 0.8"
    assert not gpu.page.enabled and gpu.ticket.enabled and gpu.policy is None and spec.slos[0].policy is not None
    assert spec.correctness.quarantine, "the manifests deploy the embedded spec: quarantine on"
    availability = spec.slos[0]
    assert availability.objective == 99.9 and availability.error_budget == 0.001 and availability.period == "30d"
    assert [a.factor for a in availability.burn_alerts()] == [14.4, 6.0, 3.0, 1.0]
    # The total-outage page's 1m and 2m, the Workbook's tiers' windows, and the period.
    assert availability.windows() == [60, 120, 300, 1800, 3600, 7200, 21600, 86400, 259200, 2592000]
    assert availability.base_window_s == 300
    assert (REPO / "slo.yaml").resolve() == DEFAULT_SPEC.resolve(), "the top-level slo.yaml is the embedded one"


def test_known_bucket_bounds_are_the_ones_vllm_exposes():
    from slo_sidecar.sidecar.exposition import SampleFilter, parse

    families = [name for name in KNOWN_BUCKETS if name.startswith("vllm:")]
    exposed: dict[str, set[float]] = {}
    for sample in parse(VLLM_EXPOSITION.read_text(), SampleFilter(families)):
        if sample.name.endswith("_bucket") and sample.label("le") != "+Inf":
            exposed.setdefault(sample.name.removesuffix("_bucket"), set()).add(float(sample.label("le")))
    assert exposed == {name: set(KNOWN_BUCKETS[name]) for name in families}


def test_engine_http_histogram_uses_the_spec_buckets():
    from slo_sidecar.engine.metrics import DURATION_BUCKETS

    assert DURATION_BUCKETS == KNOWN_BUCKETS["slo_engine_http_request_duration_seconds"]


@pytest.mark.parametrize("body, message", [
    (AVAILABILITY + "    window: 30d\n", "slo.yaml:10: slos[0].window: unknown field"),
    (AVAILABILITY.replace("99.9", "100"), "slo.yaml:5: slos[0].objective: expected a percentage strictly"),
    (AVAILABILITY.replace("99.9", "0"), "slo.yaml:5: slos[0].objective: expected a percentage strictly"),
    (AVAILABILITY + "    period: 31d\n", "slo.yaml:10: slos[0].period: unknown compliance window '31d'"),
    (AVAILABILITY + "    selector: []\n", "slo.yaml:10: slos[0].selector: empty selector"),
    (AVAILABILITY.replace("['code=~\"5..\"']", "['code=5']"),
     "slo.yaml:8: slos[0].sli.availability.errors.matchers[0]: expected a label matcher"),
    (AVAILABILITY.replace("99.9", "90"),
     "slos[0].objective: the page alert over 1h fires at a 14.4x burn, an error ratio of 1.44: above 1"),
    ("  - name: ttft\n    objective: 99\n    sli:\n      latency:\n"
     "        histogram: 'vllm:time_to_first_token_seconds'\n        threshold_s: 0.3\n",
     "slo.yaml:9: slos[0].sli.latency.threshold_s: 0.3 s is not a bucket boundary of "
     "vllm:time_to_first_token_seconds"),
    ("  - name: lat\n    objective: 99\n    sli:\n      latency: {histogram: my_seconds, threshold_s: 1}\n",
     "slos[0].sli.latency.histogram: unknown histogram 'my_seconds': give its bucket bounds"),
    ("  - name: gp\n    objective: 99\n    sli:\n      goodput: {}\n", "slos[0].sli.goodput: expected at least one"),
    ("  - name: gp\n    objective: 99\n    sli:\n      goodput: {inter_token_s: 0.1}\n",
     "slos[0].sli.goodput.inter_token_s: unknown field; expected one of ttft_s, tpot_s, e2e_s, queue_s"),
    ("  - name: lat\n    objective: 99\n    sli:\n      latency: {measure: ttfb, threshold_s: 1}\n",
     "slos[0].sli.latency.measure: expected one of ttft, tpot, e2e, queue, got 'ttfb'"),
    ("  - name: lat\n    objective: 99\n    sli:\n      latency: {threshold_s: 1}\n",
     "slos[0].sli.latency: expected `measure`"),
    ("  - name: lat\n    objective: 99\n    sli:\n      latency: {measure: ttft, threshold_s: 1, source: guess}\n",
     "slos[0].sli.latency.source: expected one of exact, histogram"),
    ("  - name: lat\n    objective: 99\n    sli:\n      latency: {measure: ttft, threshold_s: 1, buckets: [1]}\n",
     "slos[0].sli.latency.buckets: only with source: histogram"),
    ("  - name: lat\n    objective: 99\n    sli:\n      latency: {measure: ttft, threshold_s: 0.3, "
     "source: histogram}\n", "0.3 s is not a bucket boundary of vllm:time_to_first_token_seconds"),
    (AVAILABILITY + AVAILABILITY, "slos[1].name: duplicate SLO name 'availability'"),
])
def test_bad_specs_name_line_field_and_reason(body, message):
    with pytest.raises(SpecError) as caught:
        parse_spec(HEAD + body, "slo.yaml")
    assert message in str(caught.value)


def test_a_non_boundary_threshold_lists_the_real_boundaries():
    body = ("  - name: ttft\n    objective: 99\n    sli:\n      latency:\n"
            "        histogram: 'vllm:time_to_first_token_seconds'\n        threshold_s: 0.3\n")
    with pytest.raises(SpecError, match=r"0\.25, 0\.5, 0\.75"):
        parse_spec(HEAD + body, "slo.yaml")


def test_low_objectives_are_fine_once_the_impossible_alert_is_off():
    body = AVAILABILITY.replace("99.9", "90") + "    alerting:\n      page: {enabled: false}\n"
    slo = parse_spec(HEAD + body, "slo.yaml").slos[0]
    assert not slo.page.enabled and slo.ticket.enabled


def test_matchers_match_as_prometheus_does():
    assert Matcher.parse('code=~"5.."').matches({"code": "503"})
    assert not Matcher.parse('code=~"5.."').matches({"code": "1503"})  # anchored
    assert Matcher.parse('code!~"4.."').matches({})  # a missing label is ""
    assert Matcher.parse('path="a\\"b"').value == 'a"b'
    assert Matcher.parse('path="a\\"b"').promql() == 'path="a\\"b"'


SLOTH = """version: "prometheus/v1"
service: "llm"
labels: {owner: ml-platform}
slos:
  - name: "requests-availability"
    objective: 99.9
    description: "Common SLO based on availability for HTTP request responses."
    sli:
      events:
        error_query: sum(rate(http_requests_total{job="llm",code=~"(5..|429)"}[{{.window}}]))
        total_query: sum(rate(http_requests_total{job="llm"}[{{.window}}]))
    alerting:
      name: LLMHighErrorRate
      labels: {category: "availability"}
      page_alert: {labels: {severity: pageteam}}
      ticket_alert: {labels: {severity: slack}}
  - name: "latency"
    objective: 99
    sli:
      raw:
        error_ratio_query: 1 - (sum(rate(h_bucket{le="0.5"}[{{.window}}])) / sum(rate(h_count[{{.window}}])))
    alerting:
      page_alert: {disable: true}
"""


def test_sloth_specs_are_read_into_the_same_model():
    spec = parse_spec(SLOTH, "sloth.yaml")
    events, raw = spec.slos
    assert spec.format == "prometheus/v1" and spec.labels == {"owner": "ml-platform"}
    assert events.alert_name == "LLMHighErrorRate" and events.page.severity == "pageteam"
    assert events.ticket.severity == "slack" and events.labels == {}
    assert "{{.window}}" in events.sli.raw_errors and not events.sli.sidecar_can_evaluate
    assert raw.sli.kind == "raw" and not raw.page.enabled and raw.ticket.enabled


def test_sloth_errors_are_named_too():
    with pytest.raises(SpecError, match=r"sloth.yaml:10: slos\[0\].sli.events.error_query: expected the range"):
        parse_spec(SLOTH.replace("[{{.window}}]))\n        total", "[5m]))\n        total", 1), "sloth.yaml")


def test_validate_and_generate_exit_2_without_a_traceback(tmp_path):
    bad = tmp_path / "slo.yaml"
    bad.write_text(HEAD + AVAILABILITY.replace("99.9", "101"))
    for command in (["validate"], ["generate", "--out", str(tmp_path / "out")]):
        result = subprocess.run([sys.executable, "-m", "slo_sidecar.app.cli", *command, "--slo", str(bad)],
                                cwd=REPO, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert f"{bad}:5: slos[0].objective: expected a percentage" in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists(), "nothing written from a bad spec"


def test_the_json_schema_accepts_the_default_and_knows_the_parsers_fields():
    import json

    import jsonschema
    import yaml

    from slo_sidecar.spec import model, native

    schema = json.loads((DEFAULT_SPEC.parent / "slo.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load(DEFAULT_SPEC.read_text()), schema)
    jsonschema.validate(yaml.safe_load(TENANTS.read_text()), schema)
    slo = schema["$defs"]["slo"]
    assert slo["properties"]["slices"]["maxProperties"] == native.MAX_SLICES
    assert tuple(slo["properties"]["slice_by"]["items"]["enum"]) == native.SLICE_LABELS
    assert tuple(schema["properties"]) == native.TOP_FIELDS
    assert tuple(slo["properties"]) == native.SLO_FIELDS
    assert tuple(slo["properties"]["alerting"]["properties"]) == native.ALERTING_FIELDS
    assert tuple(schema["$defs"]["tier"]["properties"]) == native.TIER_FIELDS
    assert tuple(slo["properties"]["sli"]["properties"]) == native.SLI_KINDS
    assert tuple(slo["properties"]["period"]["enum"]) == tuple(model.PERIODS)
    assert set(schema["properties"]["operational"]["properties"]) == set(model.Operational.__dataclass_fields__)
    kinds = slo["properties"]["sli"]["properties"]
    assert tuple(kinds["latency"]["properties"]) == native.LATENCY_FIELDS
    assert tuple(kinds["latency"]["properties"]["measure"]["enum"]) == model.MEASURES
    assert tuple(kinds["latency"]["properties"]["source"]["enum"]) == native.SOURCES
    assert tuple(kinds["goodput"]["properties"]) == model.TARGETS
    assert tuple(kinds["timeslices"]["properties"]) == native.TIMESLICE_FIELDS
    assert tuple(kinds["timeslices"]["properties"]["no_data"]["enum"]) == model.NO_DATA
    assert tuple(kinds["timeslices"]["properties"]["gauge"]["properties"]["aggregate"]["enum"]) == model.SLICE_AGGREGATES
    bad = yaml.safe_load(HEAD + AVAILABILITY.replace("99.9", "100"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


@pytest.mark.parametrize("seconds, label", [(45, "45s"), (90, "90s"), (300, "5m"), (5400, "90m"), (3600, "1h"),
                                            (86_400, "1d"), (30 * 86_400, "30d")])
def test_duration_labels_use_the_largest_exact_unit_and_read_back(seconds, label):
    assert duration_label(seconds) == label
    assert duration_seconds(label) == seconds


@pytest.mark.parametrize("text", ["15", "1w", "1.5h", "m", "-5m", " 5m"])
def test_duration_seconds_rejects_what_is_not_a_duration(text):
    assert duration_seconds(text) is None


@given(st.floats(min_value=1e-9, max_value=1e12, allow_nan=False, allow_infinity=False))
def test_client_le_writes_a_bound_as_prometheus_client_does(bound):
    """The core may not import prometheus_client, so it writes `le` itself; the reference is the client's own."""
    assert client_le(bound) == floatToGoString(bound)


@pytest.mark.parametrize("bound", [0.1, 0.25, 1.0, 10.0, 2560.0, 1e7, 12345678.0, float("inf")])
def test_client_le_at_the_edges(bound):
    assert client_le(bound) == floatToGoString(bound)


def test_the_event_guard_is_the_workbook_arithmetic():
    """One failure in N events is a ratio of 1/N: N = ceil(1 / (factor x budget)) keeps it at the threshold."""
    slo = load_spec(str(DEFAULT_SPEC)).slos[0]  # availability, 99.9%
    assert slo.objective == 99.9
    assert [(a.tier, a.factor, a.min_events) for a in slo.burn_alerts()] == [
        ("page", 14.4, 70), ("page", 6.0, 167), ("ticket", 3.0, 334), ("ticket", 1.0, 1000)]


@given(st.sampled_from([14.4, 6.0, 3.0, 1.0]), st.floats(min_value=1e-5, max_value=0.5))
def test_the_event_guard_is_the_fewest_events_one_failure_cannot_fire(factor, budget):
    threshold = factor * budget
    if threshold >= 1:
        return  # such an alert is rejected by the reader
    guard = event_guard(factor, budget)
    assert not 1 / guard > threshold * (1 + 1e-9), "one failure in `guard` events crosses the threshold"
    assert guard == 1 or 1 / (guard - 1) > threshold * (1 - 1e-9), "a smaller guard would do"


def test_a_spec_floor_raises_the_guard_but_never_lowers_it():
    body = HEAD + AVAILABILITY + "    alerting:\n      min_events: 500\n"
    alerts = parse_spec(body, "x.yaml").slos[0].burn_alerts()
    assert [a.min_events for a in alerts] == [500, 500, 500, 1000]


def test_an_exact_latency_slo_takes_any_threshold_and_reads_the_engines_judgement():
    body = "  - name: ttft\n    objective: 99\n    sli:\n      latency: {measure: ttft, threshold_s: 0.3}\n"
    sli = parse_spec(HEAD + body, "slo.yaml").slos[0].sli
    assert (sli.source, sli.targets, sli.threshold_s) == ("exact", {"ttft_s": 0.3}, 0.3)
    assert sli.errors.rate_promql("5m") == 'sum(rate(slo_engine_slo_requests_total{slo="ttft",good="false"}[5m]))'
    assert sli.total.rate_promql("5m") == 'sum(rate(slo_engine_slo_requests_total{slo="ttft"}[5m]))'
    assert sli.histogram == "vllm:time_to_first_token_seconds", "dashboards chart vLLM's histogram beside it"


def test_a_histogram_latency_slo_is_still_there_for_a_server_that_does_not_judge():
    by_measure = "  - name: q\n    objective: 99\n    sli:\n      latency: {measure: queue, threshold_s: 0.5, " \
                 "source: histogram}\n"
    by_name = "  - name: q\n    objective: 99\n    sli:\n      latency: {histogram: 'vllm:request_queue_time_seconds'," \
              " threshold_s: 0.5}\n"
    for body in (by_measure, by_name):
        sli = parse_spec(HEAD + body, "slo.yaml").slos[0].sli
        assert sli.source == "histogram" and not sli.targets
        assert sli.total.rate_promql("5m") == "sum(rate(vllm:request_queue_time_seconds_count[5m]))"


def test_every_native_sli_is_summed_by_the_services_identity():
    spec = load_spec(str(DEFAULT_SPEC))
    assert spec.identity == ("namespace", "model_name")
    rate = spec.slos[0].sli.total.without(PROBE_MISSED).rate_promql("5m", spec.identity)
    assert rate.startswith("sum by (namespace, model_name) (rate(slo_engine_http_requests_total{")
    for slo in spec.slos:
        if slo.sli.timeslices is not None:  # its slices' value, per service
            assert "avg by (namespace, model_name) (" in slo.sli.timeslices.value_promql(spec.identity)
            continue
        for events in (slo.sli.errors, slo.sli.total):
            assert all(term.startswith("sum by (namespace, model_name) (rate(")
                       for term in re.findall(r"sum\b[^(]*\(rate\(", events.rate_promql("5m", spec.identity)))
    scoped = parse_spec("version: slo-sidecar/v1\nservice: s\nidentity: [cluster, namespace, model_name]\nslos:\n"
                        + AVAILABILITY, "s.yaml")
    assert scoped.identity == ("cluster", "namespace", "model_name")
    assert parse_spec(SLOTH, "sloth.yaml").identity == (), "a Sloth spec's queries keep the scope their author chose"


@pytest.mark.parametrize("identity, message", [
    ("[]", "identity: expected a non-empty list of label names"),
    ("[namespace, model-name]", "identity[1]: not a valid Prometheus label name: 'model-name'"),
    ("[namespace, namespace]", "identity[1]: 'namespace' is named twice"),
])
def test_a_bad_identity_is_named(identity, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_spec(f"version: slo-sidecar/v1\nservice: s\nidentity: {identity}\nslos:\n" + AVAILABILITY, "s.yaml")


@pytest.mark.parametrize("objective, factor, guard", [
    # Half the events failing is 500x a 0.1% budget and 10x a 5% one; the guard is 20 events in 2
    # minutes, above the derived ceil(1 / (factor x budget)) = 2.
    (99.9, 500, 20), (95, 10, 20), (50, None, None)])
def test_the_total_outage_page_fires_on_half_the_events_failing(objective, factor, guard):
    text = AVAILABILITY.replace("objective: 99.9", f"objective: {objective}")
    if factor is None:  # (no page can fire on a budget that large)
        text += "    alerting: {page: {enabled: false}, ticket: {enabled: false}}\n"
    slo = parse_spec("version: slo-sidecar/v1\nservice: s\nslos:\n" + text, "s.yaml").slos[0]
    fast = slo.fast_burn()
    if factor is None:
        assert fast is None, "half the events failing is within a 50% budget"
        return
    assert (fast.tier, fast.long_s, fast.short_s, fast.min_events) == ("page", 120, 60, guard)
    assert fast.factor == pytest.approx(factor)


TENANTS = Path(__file__).parent / "fixtures" / "tenants.slo.yaml"


def test_a_sliced_slo_is_one_slo_per_named_tenant_and_one_for_every_other():
    spec = load_spec(str(TENANTS))
    assert [(slo.key, slo.objective) for slo in spec.slos] == [
        ("availability/medical", 99.9), ("availability/legal", 99.0), ("availability/other", 99.5),
        ("goodput/medical", 95.0), ("goodput/legal", 95.0), ("goodput/other", 95.0)]
    by_key = {slo.key: slo for slo in spec.slos}
    medical, other = by_key["availability/medical"], by_key["availability/other"]
    assert medical.slice == medical.labels == {"model": "medical"} and other.slice == {"model": "other"}
    # Each slice reads its tenant's series only; `other` every value not named (unknown, the base model, ...).
    for events in (medical.sli.errors, medical.sli.total):
        assert [term.metric for _, term in events.terms] == ["slo_engine_http_requests_total"]  # no probe term
    total = medical.sli.total.terms[0][1]
    assert total.matches({"endpoint": "/v1/completions", "code": "200", "model": "medical"})
    assert not total.matches({"endpoint": "/v1/completions", "code": "200", "model": "legal"})
    rest = other.sli.total.terms[0][1]
    assert [rest.matches({"endpoint": "/v1/completions", "code": "200", "model": m})
            for m in ("medical", "legal", "tiny-llama", "unknown", "medicalx")] == [False, False, True, True, True]
    # The event guard follows each slice's own budget: 70 events at 99.9%, 7 at 99% for the 1h page.
    assert medical.burn_alerts()[0].min_events == 70 and by_key["availability/legal"].burn_alerts()[0].min_events == 7


@pytest.mark.parametrize("change, message", [
    ("slice_by: [tenant]", "slice_by: expected [model]"),
    ("slices: {other: {}}", "slices.other: a slice is named by a model value other than 'other'"),
    ("slices: {}", "slices: expected the model values judged apart"),
    ("slices: {a: {objective: 100}}", "slices.a.objective: expected a percentage"),
    ("slices: {a: {target: 99}}", "slices.a.target: unknown field"),
    ("slices: {" + ", ".join(f"t{i}: {{}}" for i in range(21)) + "}", "21 slices, over the cap of 20"),
])
def test_bad_slicing_is_named(tmp_path, change, message):
    text = TENANTS.read_text().replace("    slices:\n      medical: {objective: 99.9}\n      legal: {objective: 99}\n",
                                       "")
    key = change.split(":")[0]
    text = text.replace("    slice_by: [model]\n", f"    {change}\n" + ("    slice_by: [model]\n" if key == "slices" else
                                                                          "    slices: {a: {}}\n"), 1)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as raised:
        load_spec(str(path))
    assert message in str(raised.value) and "slos[0]" in str(raised.value), raised.value


def test_a_histogram_latency_slo_cannot_be_sliced(tmp_path):
    path = tmp_path / "histogram.yaml"
    path.write_text("version: slo-sidecar/v1\nservice: s\nslos:\n  - name: ttft\n    objective: 99\n"
                    "    slice_by: [model]\n    slices: {a: {}}\n"
                    "    sli: {latency: {histogram: vllm:time_to_first_token_seconds, threshold_s: 0.5}}\n")
    with pytest.raises(SpecError, match="has no model label"):
        load_spec(str(path))


def test_a_spec_document_sliced_per_tenant_keeps_its_thresholds():
    import yaml

    from slo_sidecar.spec.slicing import sliced_document

    document = yaml.safe_load(DEFAULT_SPEC.read_text())
    document["slos"].append({"name": "itl", "objective": 99, "sli": {"latency": {
        "histogram": "vllm:inter_token_latency_seconds", "threshold_s": 0.1}}})
    text = yaml.safe_dump(sliced_document(document, ("medical", "legal"), {"availability": {"legal": 99}}),
                          sort_keys=False)
    spec = parse_spec(text, "sliced.yaml")
    original = {slo.name: slo for slo in load_spec(str(DEFAULT_SPEC)).slos}
    keys = [slo.key for slo in spec.slos]
    # Every SLO the engine judges per request is sliced; correctness (golden probes: no tenant), GPU utilisation
    # (minutes of the pod's GPUs: no tenant) and the histogram's (no tenant label) are not.
    unsliced = ("correctness", "gpu-utilization")
    assert keys == [f"{name}/{tenant}" for name in original if name not in unsliced
                    for tenant in ("medical", "legal", "other")] + [*unsliced, "itl"]
    for slo in spec.slos:
        if slo.name in original:  # the same targets and objectives, but legal's own availability objective
            assert slo.sli.targets == original[slo.name].sli.targets
            assert slo.objective == (99 if slo.key == "availability/legal" else original[slo.name].objective)
    assert document["slos"][0].get("slice_by") is None  # the document given is left as it was
