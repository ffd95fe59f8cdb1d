"""A real engine serving the embedded model and LoRA adapters with vLLM's own flags: /v1/models lists
them with their parent, a request naming an adapter runs on it (greedy text differs from the base model's
and is the same every time), and an unknown name is a 404 naming the served ones."""

from __future__ import annotations

import json

import pytest

from tests.conftest import LORA_ADAPTERS as ADAPTERS  # retail: used by the cold-start test alone
from tests.helpers import EngineProcess, http_get, metric, parse_metrics
from tests.raw_http import exchange, request_bytes

pytestmark = pytest.mark.engine


def complete(engine: EngineProcess, body: dict, path: str = "/v1/completions"):
    return exchange(engine.port, request_bytes("POST", path, [("Content-Type", "application/json")],
                                               json.dumps(body).encode()))


def test_models_lists_the_base_model_and_each_adapter_with_its_parent(lora_engine):
    status, body = http_get(lora_engine.url + "/v1/models")
    assert status == 200
    models = {entry["id"]: entry["parent"] for entry in json.loads(body)["data"]}
    assert models == {"tiny-llama": None, **{name: "tiny-llama" for name in ADAPTERS}}


def test_a_request_naming_an_adapter_runs_on_it(lora_engine):
    texts = {}
    for model in ("tiny-llama", "medical", "legal"):
        answers = [complete(lora_engine, {"model": model, "prompt": "the patient", "max_tokens": 12,
                                          "temperature": 0, "ignore_eos": True}) for _ in range(2)]
        assert all(answer.status == 200 for answer in answers), answers[0].body
        first, second = (answer.json() for answer in answers)
        assert first["model"] == model
        assert first["choices"][0]["text"] == second["choices"][0]["text"]  # greedy: the same every time
        texts[model] = first["choices"][0]["text"]
    assert len(set(texts.values())) == 3, texts  # each adapter changes what the model generates
    chat = complete(lora_engine, {"model": "legal", "messages": [{"role": "user", "content": "hi"}],
                                  "max_tokens": 4}, "/v1/chat/completions")
    assert chat.status == 200 and chat.json()["model"] == "legal"


def test_an_unknown_model_is_a_404_naming_it(lora_engine):
    answer = complete(lora_engine, {"model": "finance", "prompt": "x", "max_tokens": 2})
    assert answer.status == 404
    error = answer.json()["error"]
    assert error["code"] == 404 and "finance" in error["message"]  # vLLM's words


def tenant_counts(engine: EngineProcess) -> dict[str, dict[str, float]]:
    samples = parse_metrics(http_get(engine.url + "/metrics")[1].decode())
    return {model: {
        "ok": metric(samples, "slo_engine_http_requests_total", model=model, code="200"),
        "not_found": metric(samples, "slo_engine_http_requests_total", model=model, code="404"),
        "prompt": metric(samples, "slo_engine_prompt_tokens_total", model=model),
        "generated": metric(samples, "slo_engine_generation_tokens_total", model=model),
        "judged": metric(samples, "slo_engine_slo_requests_total", model=model, slo="goodput"),
        "cold": metric(samples, "slo_engine_lora_cold_starts_total", model=model),
    } for model in ("tiny-llama", *ADAPTERS, "unknown")}


def test_each_tenant_is_counted_apart_under_its_served_name(lora_engine):
    for model in ("medical", "legal"):  # both now the most recently used: in vLLM's cache of 2
        assert complete(lora_engine, {"model": model, "prompt": "warm", "max_tokens": 1}).status == 200
    before = tenant_counts(lora_engine)
    sent = {"medical": 3, "legal": 1, "tiny-llama": 2}
    usage: dict[str, list[dict]] = {model: [] for model in sent}
    for model, count in sent.items():
        for _ in range(count):
            answer = complete(lora_engine, {"model": model, "prompt": "one two three", "max_tokens": 5,
                                            "ignore_eos": True})
            assert answer.status == 200, answer.body
            usage[model].append(answer.json()["usage"])
    assert complete(lora_engine, {"model": "finance", "prompt": "x", "max_tokens": 2}).status == 404
    after = tenant_counts(lora_engine)
    delta = {model: {key: after[model][key] - before[model][key] for key in after[model]} for model in after}
    for model, count in sent.items():
        assert delta[model]["ok"] == count and delta[model]["judged"] == count, (model, delta[model])
        assert delta[model]["prompt"] == sum(u["prompt_tokens"] for u in usage[model]), (model, delta[model])
        assert delta[model]["generated"] == 5 * count, (model, delta[model])
    # The unknown name is never a label: it is counted as "unknown", and judged nowhere (a client error).
    assert delta["unknown"]["not_found"] == 1 and delta["unknown"]["judged"] == 0
    # Both adapters were in vLLM's cache (--max-loras 2): none of these requests waited for a load.
    assert delta["medical"]["cold"] == delta["legal"]["cold"] == delta["tiny-llama"]["cold"] == 0


def test_a_request_waiting_for_its_adapter_is_a_cold_start_in_metrics_and_trace(lora_engine, otlp_receiver):
    before = tenant_counts(lora_engine)["retail"]["cold"]
    events = []
    for _ in range(2):  # the first loads retail (never used before); the second finds it loaded
        answer = complete(lora_engine, {"model": "retail", "prompt": "a basket", "max_tokens": 3})
        assert answer.status == 200, answer.body
        spans = otlp_receiver.trace(answer.headers["x-trace-id"], lambda found: len(found) >= 5)
        genai = next(span for span in spans if span.name == "text_completion retail")
        events.append(sorted(genai.events))
    assert tenant_counts(lora_engine)["retail"]["cold"] - before == 1
    assert "lora.cold_start" in events[0] and "lora.cold_start" not in events[1], events


def test_faults_injected_for_one_tenant_fail_its_requests_alone(lora_engine):
    before = tenant_counts(lora_engine)
    lora_engine.set_faults(error_ratio=1.0, model="legal")
    try:
        statuses = {model: complete(lora_engine, {"model": model, "prompt": "x", "max_tokens": 2}).status
                    for model in ("tiny-llama", "medical", "legal")}
    finally:
        state = lora_engine.set_faults(error_ratio=0.0, model=None)
    assert statuses == {"tiny-llama": 200, "medical": 200, "legal": 500}
    assert state == {"error_ratio": 0.0, "delay_s": 0.0, "token_delay_s": 0.0, "model": None}
    after = tenant_counts(lora_engine)
    assert after["legal"]["judged"] - before["legal"]["judged"] == 1  # its failure is judged, as legal's
