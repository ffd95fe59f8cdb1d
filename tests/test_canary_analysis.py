"""The canary analysis `generate` writes (alerts/canary.py): checked against Argo Rollouts' and Flagger's own
CRD schemas (tests/fixtures/canary-crds, strict: a field the CRD does not know fails, where Kubernetes would
drop it silently), and its queries run through Prometheus's rule engine (promtool) on a canary and a stable
pod, against verdicts worked out here from the budget's arithmetic.

The embedded spec's availability SLO: 99.9%, a budget of 0.1% of requests. Over the 5-minute window at 10
requests a second (3,000 events, past both guards: 500 events for a burn of 2, 1,000 for a margin of 1):
- a canary failing 0.5% burns 5: over 2, it fails; against stable pods failing 0.05% (a burn of 0.5) it is
  4.5 worse: over 1, it fails that check too;
- a canary failing 0.1% burns exactly 1: it passes both (0.5 worse than stable);
- a canary at 1 request a second (300 events) cannot be judged: NaN, whatever it fails.

The correctness SLO's golden check, on the embedded golden set's 8 items: one bad probe in the window fails a
canary (bad probes over 0), however few it has scored; a canary whose probes all scored within the tolerance
passes once it has scored 8 in the window, and is NaN before.
"""

from __future__ import annotations

import copy
import gzip
import subprocess
import sys

import jsonschema
import pytest
import yaml

from slo_sidecar.alerts.canary import CANARY_BURN, CANARY_MARGIN, render
from slo_sidecar.spec.load import DEFAULT_SPEC, load_spec
from tests.helpers import FIXTURES, promtool_counter
from tests.test_rules import needs_promtool

CRDS = FIXTURES / "canary-crds"


def crd_schemas() -> dict[str, dict]:
    """{kind: its served version's openAPIV3Schema}, from the projects' own CRD files."""
    documents = [*yaml.safe_load_all(gzip.open(CRDS / "argo-rollouts-analysis-template-crd.yaml.gz")),
                 *yaml.safe_load_all((CRDS / "flagger-crd.yaml").read_text())]
    return {doc["spec"]["names"]["kind"]: strict(next(v for v in doc["spec"]["versions"] if v["served"])
                                                 ["schema"]["openAPIV3Schema"]) for doc in documents if doc}


def strict(schema: dict) -> dict:
    """The schema with unknown fields refused wherever it lists an object's fields and does not keep unknown
    ones (x-kubernetes-preserve-unknown-fields): the apiserver would prune a misspelt field without a word."""
    schema = copy.deepcopy(schema)

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
                node.setdefault("additionalProperties", False)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(schema)
    return schema


@pytest.fixture(scope="module")
def generated() -> dict[str, list[dict]]:
    return {name: [doc for doc in yaml.safe_load_all(text) if doc]
            for name, text in render(load_spec(str(DEFAULT_SPEC)), golden_items=8).items()}


def canary(analysis: dict) -> dict:
    """A Canary for the manifests' Deployment, with the generated analysis."""
    return {"apiVersion": "flagger.app/v1beta1", "kind": "Canary", "metadata": {"name": "slo-sidecar"},
            "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "slo-sidecar"},
                     "service": {"port": 8000},
                     "analysis": {"interval": "1m", "threshold": 5, "maxWeight": 50, "stepWeight": 10,
                                  **analysis["analysis"]}}}


def test_every_template_validates_against_its_projects_crd(generated):
    schemas = crd_schemas()
    argo = generated["canary/argo-rollouts/analysis-templates.yaml"]
    flagger = generated["canary/flagger/metric-templates.yaml"]
    slos = [slo for slo in load_spec(str(DEFAULT_SPEC)).slos if slo.sli.timeslices is None]
    # Every SLO that counts events is judged, on two checks; the correctness SLO on its golden score too. The
    # time-slice GPU utilisation is not: minutes of a cost objective say nothing of a canary's five.
    assert len(argo) == len(slos) and len(flagger) == 2 * len(slos) + 1
    assert not any("gpu-utilization" in doc["metadata"]["name"] for doc in argo)
    for doc in [*argo, *flagger]:
        jsonschema.validate(doc, schemas[doc["kind"]])
    analysis = generated["canary/flagger/canary-analysis.yaml"][0]
    jsonschema.validate(canary(analysis), schemas["Canary"])
    names = {doc["metadata"]["name"] for doc in flagger}
    assert {metric["templateRef"]["name"] for metric in analysis["analysis"]["metrics"]} == names
    # The strict check can fail: a misspelt field of each kind is refused.
    broken = copy.deepcopy(argo[0])
    broken["spec"]["metrics"][0]["succesCondition"] = broken["spec"]["metrics"][0].pop("successCondition")
    with pytest.raises(jsonschema.ValidationError, match="succesCondition"):
        jsonschema.validate(broken, schemas["AnalysisTemplate"])
    broken = copy.deepcopy(flagger[0])
    broken["spec"]["querry"] = broken["spec"].pop("query")
    with pytest.raises(jsonschema.ValidationError, match="querry"):
        jsonschema.validate(broken, schemas["MetricTemplate"])


# --- The queries, in Prometheus's rule engine --------------------------------------------------------------

MINUTES = 12


def argo_query(template: dict, check: str, canary_hash: str) -> str:
    metric = next(m for m in template["spec"]["metrics"] if m["name"].endswith(check))
    return (metric["provider"]["prometheus"]["query"].replace("{{args.namespace}}", "ns")
            .replace("{{args.canary-hash}}", canary_hash).replace("{{args.stable-hash}}", "old"))


def flagger_query(templates: list[dict], check: str, target: str) -> str:
    template = next(t for t in templates if t["metadata"]["name"].endswith(check))
    return template["spec"]["query"].replace("{{ namespace }}", "ns").replace("{{ target }}", target)


def promtool_queries(tmp_path, series: list[dict], checks: list[dict]) -> None:
    """promtool evaluates each check's expression over the series, a sample a minute: all as expected."""
    test = {"rule_files": [], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": checks}]}
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test, sort_keys=False))
    result = subprocess.run(["promtool", "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


@needs_promtool
def test_the_checks_fail_a_burning_canary_pass_a_healthy_one_and_wait_for_events(generated, tmp_path):
    """Three canaries beside one stable set (Argo's hashes; Flagger's names: `t` and `t-primary`), each read by
    both projects' queries at minute 10, when every 5-minute window is full."""
    pods = {"app-new-a1": (10.0, 0.005), "app-ok-c1": (10.0, 0.001), "app-few-d1": (1.0, 0.05),
            "app-old-b1": (10.0, 0.0005),
            "t-x1-y1": (10.0, 0.005), "t-primary-x2-y2": (10.0, 0.0005)}
    series = []
    for pod, (rate, failing) in pods.items():
        labels = f'namespace="ns", pod="{pod}", endpoint="/v1/completions"'
        for code, share in (("500", failing), ("200", 1 - failing)):
            series.append({"series": f'slo_engine_http_requests_total{{{labels}, code="{code}"}}',
                           "values": promtool_counter([rate * 60 * share] * (MINUTES + 1))})
    argo = next(t for t in generated["canary/argo-rollouts/analysis-templates.yaml"]
                if t["metadata"]["name"].endswith("-availability"))
    flagger = [t for t in generated["canary/flagger/metric-templates.yaml"]
               if "-availability-" in t["metadata"]["name"]]
    nan = float("nan")
    expected = [  # (query, value): the burns worked out in the module docstring
        (argo_query(argo, "burn", "new"), 5.0), (argo_query(argo, "vs-stable", "new"), 4.5),
        (argo_query(argo, "burn", "ok"), 1.0), (argo_query(argo, "vs-stable", "ok"), 0.5),
        (argo_query(argo, "burn", "few"), nan), (argo_query(argo, "vs-stable", "few"), nan),
        (flagger_query(flagger, "burn", "t"), 5.0), (flagger_query(flagger, "vs-stable", "t"), 4.5),
    ]
    assert CANARY_BURN < 5.0 and 1.0 <= CANARY_BURN and CANARY_MARGIN < 4.5 and 0.5 <= CANARY_MARGIN
    # promtool compares floats exactly (0.0025/0.001 - 0.0005/0.001 is 4.499999999999999): values to a
    # thousandth; and NaN equals nothing, itself included: a NaN is what `q != q` keeps.
    checks = [{"eval_time": "10m",
               "expr": f"count((\n{query}\n) != (\n{query}\n))" if value != value else
                       f"round(1000 * (\n{query}\n)) / 1000",
               "exp_samples": [{"labels": "{}", "value": 1 if value != value else value}]}
              for query, value in expected]
    promtool_queries(tmp_path, series, checks)


@needs_promtool
def test_the_golden_check_fails_one_bad_probe_and_passes_a_whole_good_set(generated, tmp_path):
    """Probes one every 10 s (6 a minute, 30 in the window) or one a minute (5 in the window, fewer than the 8
    items): bad ones at minute 8. Read at minute 10 with Argo's query."""
    pods = {"app-bad-a1": (6, 1), "app-good-b1": (6, 0), "app-few-c1": (1, 0), "app-fewbad-d1": (1, 1)}
    series = []
    for pod, (per_minute, bad) in pods.items():
        labels = f'namespace="ns", pod="{pod}"'
        good = [per_minute - (bad if minute == 8 else 0) for minute in range(MINUTES + 1)]
        series += [{"series": f'slo_golden_probes_total{{{labels}, result="good"}}', "values": promtool_counter(good)},
                   {"series": f'slo_golden_probes_total{{{labels}, result="bad"}}',
                    "values": promtool_counter([bad if minute == 8 else 0 for minute in range(MINUTES + 1)])}]
    argo = next(t for t in generated["canary/argo-rollouts/analysis-templates.yaml"]
                if t["metadata"]["name"].endswith("-correctness"))
    metric = next(m for m in argo["spec"]["metrics"] if m["name"] == "correctness-golden")
    assert (metric["successCondition"], metric["failureCondition"]) == ("result[0] <= 0", "result[0] > 0")
    # fails: over 0 (1 for a failed check); passes: exactly 0; NaN: neither
    expected = {"bad": "fails", "good": "passes", "few": "nan", "fewbad": "fails"}
    checks = []
    for pod_hash, verdict in expected.items():
        query = argo_query(argo, "golden", pod_hash)
        expr = {"fails": f"(\n{query}\n) > bool 0", "passes": f"(\n{query}\n) == bool 0",
                "nan": f"count((\n{query}\n) != (\n{query}\n))"}[verdict]
        checks.append({"eval_time": "10m", "expr": expr, "exp_samples": [{"labels": "{}", "value": 1}]})
    promtool_queries(tmp_path, series, checks)


def test_generate_refuses_a_golden_set_it_cannot_read_naming_the_field(tmp_path):
    """The golden check's guard is the golden set's size: a set that is not there exits 2, naming it."""
    document = yaml.safe_load(DEFAULT_SPEC.read_text())
    document["correctness"]["golden_set"] = "missing-golden.yaml"
    (tmp_path / "slo.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    result = subprocess.run([sys.executable, "-m", "slo_sidecar.app.cli", "generate", "--slo", str(tmp_path / "slo.yaml"),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "correctness.golden_set" in result.stderr and "missing-golden.yaml" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()  # nothing half written
