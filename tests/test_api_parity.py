"""API parity: every request feature of vLLM's OpenAI API gets the same answer from our engine
(engine/launch.py: vLLM's server with our middleware and plugin) as from plain vLLM on the same model.

Both servers run at once on the embedded model; each request goes to both, greedy or seeded, and the
answers must be equal once the fields that differ by nature (ids, timestamps) are set aside: the status,
and every field of the body. So no field is dropped, refused or altered on its way through our layer.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

import pytest

from slo_sidecar.engine.tiny_model import MODEL_NAME
from slo_sidecar.app.processes import ManagedProcess, free_port
from tests.helpers import REPO
from tests.conftest import TOOLS

pytestmark = pytest.mark.engine

CHAT = [{"role": "user", "content": "Say something"}]
WEATHER = {"type": "function", "function": {"name": "weather", "description": "The weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}}, "required": ["name"]}
GREEDY = {"model": MODEL_NAME, "temperature": 0, "max_tokens": 8}

# (feature, method, path, body): the features of vLLM's OpenAI API a client may send.
CASES = [
    ("penalties", "POST", "/v1/completions", {**GREEDY, "prompt": "a b a b", "presence_penalty": 1.5,
                                              "frequency_penalty": 1.0, "repetition_penalty": 1.3}),
    ("top_k and min_p", "POST", "/v1/completions", {**GREEDY, "prompt": "x", "temperature": 1.0, "seed": 7,
                                                    "top_k": 5, "min_p": 0.1}),
    ("logit_bias", "POST", "/v1/completions", {**GREEDY, "prompt": "x", "logit_bias": {"100": 100}}),
    ("stop_token_ids and min_tokens", "POST", "/v1/completions", {**GREEDY, "prompt": "x", "stop_token_ids": [100],
                                                                  "min_tokens": 4, "logit_bias": {"100": 100}}),
    ("seed", "POST", "/v1/completions", {**GREEDY, "prompt": "x", "temperature": 1.0, "seed": 1234}),
    ("logprobs", "POST", "/v1/completions", {**GREEDY, "prompt": "x", "logprobs": 3}),
    ("prompt_logprobs", "POST", "/v1/completions", {**GREEDY, "prompt": "one two", "prompt_logprobs": 2}),
    ("echo", "POST", "/v1/completions", {**GREEDY, "prompt": "echo me", "echo": True}),
    ("batched prompts", "POST", "/v1/completions", {**GREEDY, "prompt": ["first", "second", "third"]}),
    ("chat logprobs", "POST", "/v1/chat/completions", {**GREEDY, "messages": CHAT, "logprobs": True,
                                                       "top_logprobs": 2}),
    ("max_completion_tokens", "POST", "/v1/chat/completions", {"model": MODEL_NAME, "temperature": 0,
                                                               "messages": CHAT, "max_completion_tokens": 5}),
    ("json_schema", "POST", "/v1/chat/completions", {**GREEDY, "max_tokens": 40, "messages": CHAT,
                                                     "response_format": {"type": "json_schema", "json_schema": {
                                                         "name": "person", "schema": SCHEMA}}}),
    ("structured choice", "POST", "/v1/completions", {**GREEDY, "prompt": "pick",
                                                      "structured_outputs": {"choice": ["red", "green"]}}),
    ("named tool_choice", "POST", "/v1/chat/completions", {**GREEDY, "max_tokens": 40, "messages": CHAT,
                                                           "tools": [WEATHER], "tool_choice": {
                                                               "type": "function", "function": {"name": "weather"}}}),
    ("required tool_choice", "POST", "/v1/chat/completions", {**GREEDY, "max_tokens": 40, "messages": CHAT,
                                                              "tools": [WEATHER], "tool_choice": "required"}),
    ("tool message in history", "POST", "/v1/chat/completions", {**GREEDY, "messages": [
        *CHAT, {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}], "tools": [WEATHER]}),
    ("streamed logprobs", "POST", "/v1/completions", {**GREEDY, "prompt": "x", "logprobs": 1, "stream": True}),
    ("continuous usage stats", "POST", "/v1/chat/completions", {**GREEDY, "messages": CHAT, "stream": True,
                                                                "stream_options": {"include_usage": True,
                                                                                   "continuous_usage_stats": True}}),
    ("tokenize", "POST", "/tokenize", {"model": MODEL_NAME, "prompt": "count these tokens"}),
    ("detokenize", "POST", "/detokenize", {"model": MODEL_NAME, "tokens": [100, 200, 300]}),
    ("version", "GET", "/version", None),
    ("responses", "POST", "/v1/responses", {"model": MODEL_NAME, "input": "Hello", "temperature": 0,
                                            "max_output_tokens": 8}),
    ("an unknown field is vLLM's to judge", "POST", "/v1/completions", {**GREEDY, "prompt": "x", "no_such": 1}),
    ("a bad value is vLLM's to refuse", "POST", "/v1/completions", {**GREEDY, "prompt": "x", "max_tokens": -1}),
]
# Fields that differ between any two answers by nature.
VOLATILE = {"id", "created", "created_at", "system_fingerprint", "request_id"}


@pytest.fixture(scope="module")
def servers(tmp_path_factory, stock_vllm):
    """Stock vLLM (the session's) and our engine, with the same tool-call flags."""
    workdir = tmp_path_factory.mktemp("parity")
    port = free_port()
    ours = ManagedProcess("engine", [sys.executable, "-m", "slo_sidecar.engine.launch", "--host", "127.0.0.1", "--port", str(port),
                                     "--max-model-len", "512", *TOOLS], workdir / "ours.log", cwd=REPO)
    ours.url = f"http://127.0.0.1:{port}"
    with ours.start():
        ours.wait_http_ok(ours.url + "/ready", 300)
        yield stock_vllm, ours


def answer(url: str, method: str, path: str, body: dict | None) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    if text.startswith("data: "):  # a stream: its events, in order
        return status, stream_view([normal(json.loads(line[6:])) for line in text.splitlines()
                                    if line.startswith("data: {")])
    return status, normal(json.loads(text))


def stream_view(events: list) -> dict:
    """A stream as its client reads it, whatever its chunking: vLLM sends in one chunk the tokens it produced
    since its last send, so where chunks break follows timing (a fresh clone's busy run split " Poth" in two on
    one side only). Each choice's text, the set of fields the chunks carry, and the first and last chunks whole."""
    text: dict[int, str] = {}
    for event in events:
        for choice in event.get("choices", []):
            piece = (choice.get("delta") or {}).get("content") if "delta" in choice else choice.get("text")
            text[choice.get("index", 0)] = text.get(choice.get("index", 0), "") + (piece or "")
    fields = sorted({key for event in events for key in event})
    return {"text": text, "fields": fields, "first": [without_text(e) for e in events[:1]],
            "last": [without_text(e) for e in events[-1:]]}


def without_text(event: dict) -> dict:
    """A chunk less its text (the stream's text is compared whole)."""
    choices = [{key: ({k: v for k, v in item.items() if k != "content"} if key == "delta" else item)
                for key, item in choice.items() if key != "text"} for choice in event.get("choices", [])]
    return {**event, "choices": choices} if "choices" in event else event


def normal(value: object) -> object:
    """The answer without what differs by nature: ids and timestamps."""
    if isinstance(value, dict):
        return {key: normal(item) for key, item in value.items() if key not in VOLATILE}
    if isinstance(value, list):
        return [normal(item) for item in value]
    return value


@pytest.mark.parametrize(("feature", "method", "path", "body"), CASES, ids=[case[0] for case in CASES])
def test_our_engine_answers_as_vllm_does(servers, feature, method, path, body):
    plain, ours = servers
    theirs = answer(plain.url, method, path, body)
    got = answer(ours.url, method, path, body)
    assert got == theirs, f"{feature}: ours {str(got)[:600]}\nvLLM's {str(theirs)[:600]}"


def test_the_features_are_honoured_not_just_answered_alike(servers):
    """The same answer could be the same refusal: the features that vLLM honours must succeed and carry
    what they asked for, through our layer."""
    _, ours = servers
    honoured = {feature: answer(ours.url, method, path, body) for feature, method, path, body in CASES}
    refused = {feature for feature, (status, _) in honoured.items() if status != 200}
    assert refused == {"a bad value is vLLM's to refuse"}, refused
    assert honoured["logprobs"][1]["choices"][0]["logprobs"]["top_logprobs"]
    assert honoured["echo"][1]["choices"][0]["text"].startswith("echo me")
    assert len(honoured["batched prompts"][1]["choices"]) == 3
    constrained = honoured["json_schema"][1]["choices"][0]["message"]["content"]
    assert constrained.startswith("{"), constrained  # the schema's grammar (the tiny model then pads with spaces)
    assert honoured["structured choice"][1]["choices"][0]["text"] in ("red", "green")
    message = honoured["named tool_choice"][1]["choices"][0]["message"]
    assert "weather" in json.dumps(message.get("tool_calls")) + (message.get("content") or "")
