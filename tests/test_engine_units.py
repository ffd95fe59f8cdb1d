"""Fault injection, the engine's series and its GPUs: pure, fast, no engine."""

from __future__ import annotations

import subprocess
import sys

import pytest

from slo_sidecar.engine.faults import FaultInjector, FaultSettingError
from slo_sidecar.engine.adapter_cache import AdapterResidency
from slo_sidecar.engine.metrics import ERROR_REASONS, ServerMetrics
from prometheus_client import CollectorRegistry
from tests.helpers import REPO, skip_if_nvml_loads


@pytest.mark.parametrize("ratio, requests, failures", [(0.0, 10, 0), (0.25, 8, 2), (0.5, 10, 5), (1.0, 4, 4),
                                                      (0.1, 25, 2), (1 / 3, 9, 3)])
def test_fault_ratio_fails_exactly_its_share(ratio, requests, failures):
    faults = FaultInjector()
    faults.configure({"error_ratio": ratio})
    assert sum(faults.should_fail() for _ in range(requests)) == failures


def test_fault_configuration_is_validated():
    faults = FaultInjector()
    for body in ({"error_ratio": 1.5}, {"error_ratio": "half"}, {"delay_s": -1}, {"token_delay_s": 11},
                 {"errors": 1}):
        with pytest.raises(FaultSettingError):
            faults.configure(body)
    faults.configure({"delay_s": 2})
    faults.configure({"token_delay_s": 0.01})
    assert faults.state() == {"error_ratio": 0.0, "delay_s": 2.0, "token_delay_s": 0.01, "model": None}


def test_faults_for_one_tenant_touch_its_requests_alone():
    faults = FaultInjector(served=("base", "medical", "legal"))
    for body in ({"model": "finance"}, {"model": 3}):  # not served: refused, state unchanged
        with pytest.raises(FaultSettingError):
            faults.configure(body)
    faults.configure({"error_ratio": 0.5, "model": "legal"})
    assert [faults.applies_to(model) for model in ("base", "medical", "legal")] == [False, False, True]
    # The share is of that tenant's requests: every second one of legal's fails.
    assert [faults.should_fail() for _ in range(4)] == [False, True, False, True]
    faults.configure({"model": None})  # every tenant again
    assert faults.applies_to("medical") and faults.state()["error_ratio"] == 0.5


def test_every_status_a_generation_endpoint_answers_is_precreated_at_zero():
    """So the availability SLI's error series exist before the first error, and rate() counts that error."""
    registry = CollectorRegistry()
    ServerMetrics(registry, max_waiting_requests=7, models=("base", "medical"))
    assert registry.get_sample_value("slo_engine_max_waiting_requests") == 7  # the queue alert's denominator
    for model in ("base", "medical", "unknown"):  # every tenant, and requests that named none
        for endpoint in ("/v1/completions", "/v1/chat/completions"):
            for code in ("200", "429", "499", "500", "503", "504"):
                assert registry.get_sample_value("slo_engine_http_requests_total",
                                                 {"endpoint": endpoint, "code": code, "model": model}) == 0, \
                    (endpoint, code, model)


def test_error_reasons_are_bounded_and_precreated():
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry, models=("base",))
    for reason in ERROR_REASONS:
        assert registry.get_sample_value("slo_engine_request_errors_total", {"reason": reason, "model": "base"}) == 0
    metrics.record_error("timeout", "base")
    assert registry.get_sample_value("slo_engine_request_errors_total", {"reason": "timeout", "model": "base"}) == 1
    with pytest.raises(ValueError):
        metrics.record_error("something new")


def test_tenant_series_are_bounded_by_the_served_names():
    """model label values: the served names and "unknown", nothing else, whatever the traffic."""
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry, models=("base", "a", "b"))
    metrics.record_tokens("a", 12, 30)
    metrics.record_tokens("a", 3, 5)
    assert registry.get_sample_value("slo_engine_prompt_tokens_total", {"model": "a"}) == 15
    assert registry.get_sample_value("slo_engine_generation_tokens_total", {"model": "a"}) == 35
    assert registry.get_sample_value("slo_engine_generation_tokens_total", {"model": "b"}) == 0
    models = {sample.labels["model"] for family in registry.collect() for sample in family.samples
              if "model" in sample.labels}
    assert models == {"base", "a", "b", "unknown"}
    # Cold starts exist for adapters only: the base model never waits for one.
    cold = {s.labels["model"] for f in registry.collect() for s in f.samples if s.name == "slo_engine_lora_cold_starts_total"}
    assert cold == {"a", "b"}


def test_adapter_residency_is_vllms_lru_of_max_loras():
    residency = AdapterResidency(capacity=2)
    # a (cold), b (cold), a (warm), c (cold, evicts b: least recently used), b (cold, evicts a), c (warm)
    assert [residency.use(name) for name in "abacbc"] == [True, True, False, True, True, False]
    assert residency.loaded == ("b", "c")
    single = AdapterResidency(capacity=1)
    assert [single.use(name) for name in "aabba"] == [True, False, True, False, True]


def test_bad_model_directory_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "slo_sidecar.app.cli", "engine", "--model", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "not a Hugging Face model directory" in result.stderr and "Traceback" not in result.stderr


def test_the_engine_names_the_gpus_it_can_use_by_uuid():
    from slo_sidecar.engine.health import visible_gpu_uuids
    from slo_sidecar.sidecar.fake_nvml import fake_gpus

    nvml = fake_gpus(2)
    assert visible_gpu_uuids(nvml) == [gpu.uuid for gpu in nvml.gpus]
    assert visible_gpu_uuids(type(nvml)(library_present=False)) == []


def test_without_nvml_the_engine_names_no_gpu():
    skip_if_nvml_loads()
    from slo_sidecar.engine.health import visible_gpu_uuids

    assert visible_gpu_uuids() == []
