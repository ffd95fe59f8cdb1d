"""A real engine serving the embedded model and two LoRA adapters with vLLM's own flags: /v1/models lists
them with their parent, a request naming an adapter runs on it (greedy text differs from the base model's
and is the same every time), and an unknown name is a 404 naming the served ones."""

from __future__ import annotations

import json

import pytest

from engine.tiny_lora import ensure_lora
from tests.helpers import EngineProcess, http_get
from tests.raw_http import exchange, request_bytes

pytestmark = pytest.mark.engine

ADAPTERS = ("medical", "legal")


def complete(engine: EngineProcess, body: dict, path: str = "/v1/completions"):
    return exchange(engine.port, request_bytes("POST", path, [("Content-Type", "application/json")],
                                               json.dumps(body).encode()))


@pytest.fixture(scope="module")
def lora_engine(tmp_path_factory):
    modules = [f"{name}={ensure_lora(name)}" for name in ADAPTERS]
    engine = EngineProcess(tmp_path_factory.mktemp("lora") / "engine.log", "--max-model-len", "512",
                           "--enable-lora", "--max-loras", "2", "--max-lora-rank", "8", "--lora-modules", *modules)
    engine.start()
    try:
        engine.wait_ready()
        yield engine
        assert engine.stop() == 0, engine.log_tail()
    finally:
        engine.kill_group()


def test_models_lists_the_base_model_and_each_adapter_with_its_parent(lora_engine):
    status, body = http_get(lora_engine.url + "/v1/models")
    assert status == 200
    models = {entry["id"]: entry["parent"] for entry in json.loads(body)["data"]}
    assert models == {"tiny-llama": None, "medical": "tiny-llama", "legal": "tiny-llama"}


def test_a_request_naming_an_adapter_runs_on_it(lora_engine):
    texts = {}
    for model in ("tiny-llama", *ADAPTERS):
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


def test_an_unknown_model_is_a_404_naming_the_served_ones(lora_engine):
    answer = complete(lora_engine, {"model": "finance", "prompt": "x", "max_tokens": 2})
    assert answer.status == 404
    error = answer.json()["error"]
    assert error["code"] == "model_not_found"
    assert all(f"'{name}'" in error["message"] for name in ("tiny-llama", *ADAPTERS))
