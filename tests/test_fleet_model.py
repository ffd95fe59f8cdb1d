"""The fleet benchmark's synthetic pods: a real pod's series, counters that only grow, and SLI counters that
say exactly what the model says happened (the truth every SLO value is held to)."""

from __future__ import annotations

import re

import pytest

from bench.fleet_model import Fleet, Incident, Pod, PodTemplate, history, make_fleet, render, target_labels
from tests.helpers import parse_metrics

HOUR = 3600.0


@pytest.fixture(scope="module")
def template() -> PodTemplate:
    return PodTemplate.load()


def test_make_fleet_spreads_pods_over_services_and_namespaces():
    fleet = make_fleet(200, 5, 2)
    assert len(fleet.pods) == 200 and len({p.name for p in fleet.pods}) == 200
    assert fleet.services() == [("ns-0", "svc-0"), ("ns-0", "svc-2"), ("ns-0", "svc-4"), ("ns-1", "svc-1"),
                                ("ns-1", "svc-3")]
    assert all(1.0 <= p.rate_rps <= 3.0 for p in fleet.pods)


def test_a_rendered_pod_serves_the_captured_series_with_its_service(template):
    fleet = make_fleet(10, 5, 2)
    pod = fleet.pods[3]
    engine = parse_metrics(render(fleet, template, pod, "engine", 1000.0))
    sidecar = parse_metrics(render(fleet, template, pod, "sidecar", 1000.0))
    assert (len(engine), len(sidecar)) == template.series()
    names = {dict(labels)["model_name"] for _, labels in engine if "model_name" in dict(labels)}
    assert names == {pod.service}


def test_counters_grow_and_the_sli_counters_are_the_model(template):
    start = 0.0
    fleet = Fleet([Pod("p", "ns", "svc", 2.0)], start, baseline_error_ratio=0.001,
                  incidents=[Incident("svc", 1 * HOUR, 2 * HOUR, 0.1)])
    pod = fleet.pods[0]
    at = {t: parse_metrics(render(fleet, template, pod, "engine", t)) for t in (HOUR, 3 * HOUR)}
    labels = {"endpoint": "/v1/completions", "model": "svc", "model_name": "svc"}
    ok = ("slo_engine_http_requests_total", frozenset({**labels, "code": "200"}.items()))
    failed = ("slo_engine_http_requests_total", frozenset({**labels, "code": "500"}.items()))
    # From first principles: 2 req/s for 3 h is 21,600 requests; 0.1% of them fail, plus 10% - 0.1% more
    # during the hour of the incident (7,200 requests): 21.6 + 712.8 = 734.4 failures.
    assert at[3 * HOUR][failed] == pytest.approx(21.6 + 712.8)
    assert at[3 * HOUR][ok] + at[3 * HOUR][failed] == pytest.approx(21600)
    for key, value in at[HOUR].items():
        if key[0].endswith(("_total", "_count", "_bucket", "_sum")):
            assert at[3 * HOUR][key] >= value, key
    assert fleet.true_error_ratio("ns", "svc", 0, 3 * HOUR) == pytest.approx(734.4 / 21600)
    assert fleet.true_error_ratio("ns", "svc", 2 * HOUR, 3 * HOUR) == pytest.approx(0.001)


def test_history_lines_carry_the_scrape_labels_and_match_the_live_values(template):
    fleet = make_fleet(2, 2, 1)
    lines = list(history(fleet, template, 600.0, 1200.0, 300.0))
    pattern = re.compile(r'^(\S+)\{(.*)\} (\S+) (\S+)$')
    parsed = [pattern.match(line) for line in lines]
    assert all(parsed) and {float(m.group(4)) for m in parsed} == {600.0, 900.0, 1200.0}
    pod = fleet.pods[1]
    labels = target_labels(pod, "engine")
    ours = [m for m in parsed if f'pod="{pod.name}"' in m.group(2) and 'job="engine"' in m.group(2)
            and f'instance="{labels["instance"]}"' in m.group(2) and float(m.group(4)) == 900.0]
    live = parse_metrics(render(fleet, template, pod, "engine", 900.0))
    assert ours
    for match in ours:
        own = frozenset((k, v) for k, v in re.findall(r'(\w+)="([^"]*)"', match.group(2))
                        if k not in ("job", "pod", "instance", "namespace"))
        assert live[(match.group(1), own)] == float(match.group(3))


def test_backfill_passes_put_each_recording_after_what_it_reads():
    from bench.fleet import base_recordings, our_groups
    from slo_sidecar.app.backfill import rule_levels
    from bench.sloth_rules import sloth_rule_groups
    from slo_sidecar.spec.load import DEFAULT_SPEC, load_spec

    spec = load_spec(str(DEFAULT_SPEC))
    ours = [sorted({rule["record"] for rule in chosen}) for chosen in rule_levels(base_recordings(our_groups(spec)))]
    # The 5m event rates read the scraped counters; their ratio and their timestamps read the rates.
    assert ours == [["slo:sli_error_events:rate5m", "slo:sli_total_events:rate5m"],
                    ["slo:sli_error:ratio_rate5m", "slo:sli_total_events:timestamp"]]
    assert len(rule_levels(base_recordings(sloth_rule_groups(spec)))) == 1  # Sloth's 5m ratio reads the counters
    with pytest.raises(ValueError, match="cycle"):
        rule_levels([{"record": "a", "expr": "b + 1"}, {"record": "b", "expr": "a + 1"}])


def test_an_incident_flag_names_service_ratio_and_hours():
    import argparse

    from bench.fleet import parse_incident

    incident = parse_incident("svc-2=0.05@3-1", 10 * HOUR)
    assert (incident.service, incident.error_ratio, incident.start_s, incident.end_s) == ("svc-2", 0.05, 7 * HOUR, 9 * HOUR)
    for bad in ("svc-2", "svc-2=x", "svc-2=2", "svc-2=0.1@1-3"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_incident(bad, 10 * HOUR)
