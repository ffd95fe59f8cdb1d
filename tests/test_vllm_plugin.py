"""Our instrumentation on vLLM's own OpenAI server, launched as a user launches it:

    python -m vllm.entrypoints.openai.api_server --model DIR --middleware slo_sidecar.engine.asgi.SloMiddleware

with the stat-logger plugin loaded by its entry point. The exact SLO counters, request counters and
per-tenant tokens are served on vLLM's own /metrics, beside `vllm:*`, and count what the test sent:
tokens as vLLM's own `usage` reports them, a request judged once however many sequences it ran, probes
and client errors left out, a client that went away counted as 499.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request

import pytest

from slo_sidecar.engine.tiny_lora import ensure_lora
from slo_sidecar.engine.tiny_model import MODEL_NAME, ensure_default_model
from slo_sidecar.app.processes import VllmServerProcess, free_port
from slo_sidecar.spec.model import PROBE_HEADER
from tests.conftest import CPU_KV_CACHE, TRACE_ENV, serving
from tests.helpers import metric, parse_metrics
from tests.test_tracing import INCOMING_PARENT, INCOMING_TRACE, check_tree, complete_tree

pytestmark = pytest.mark.engine

# Two exact TTFT SLOs no request can miss and none can meet: the judge's verdicts follow the targets.
SPEC = """version: slo-sidecar/v1
service: llm-inference
slos:
  - name: ttft-never
    objective: 99
    sli: {latency: {measure: ttft, threshold_s: 0.00001}}
  - name: ttft-always
    objective: 99
    sli: {latency: {measure: ttft, threshold_s: 60}}
  - name: queue
    objective: 99
    sli: {latency: {measure: queue, threshold_s: 60}}
"""
SLOS = ("ttft-never", "ttft-always", "queue")
# vLLM's CPU build gives its KV cache 90% of the machine's memory unless told (21 GiB here: 77 s to set up,
# and no room for a second engine); 1 GiB, as `slo-sidecar engine` gives it.
# Our admission and body limits, set as a user sets them in their own vLLM's environment.
MAX_NUM_SEQS = 4
LIMITS = {"SLO_ENGINE_MAX_WAITING_REQUESTS": "2", "SLO_ENGINE_MAX_BODY_BYTES": "65536",
          "SLO_ENGINE_REQUEST_TIMEOUT_S": "3"}
ADMIN_TOKEN = "admin-token-0123456789"
ADAPTERS = ("medical", "legal")  # LoRA adapters, vLLM holding one at a time: each switch loads one


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory, otlp_receiver):
    workdir = tmp_path_factory.mktemp("vllm-plugin")
    (workdir / "slo.yaml").write_text(SPEC)
    (workdir / "admin-token").write_text(ADMIN_TOKEN)
    admin = {"SLO_ENGINE_ADMIN_PORT": str(free_port()), "SLO_ENGINE_ADMIN_TOKEN_FILE": str(workdir / "admin-token")}
    adapters = [f"{name}={ensure_lora(name)}" for name in ADAPTERS]
    process = VllmServerProcess(workdir / "vllm.log", str(ensure_default_model()), "--served-model-name",
                                MODEL_NAME, "--max-model-len", "512", "--enforce-eager", "--max-num-seqs",
                                str(MAX_NUM_SEQS), "--enable-lora", "--max-loras", "1", "--max-lora-rank", "8",
                                "--lora-modules", *adapters, "--middleware", "slo_sidecar.engine.asgi.SloMiddleware",
                                env={"SLO_ENGINE_SLO": str(workdir / "slo.yaml"), **CPU_KV_CACHE, **TRACE_ENV,
                                     **LIMITS, **admin,
                                     "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint})
    process.admin_url = f"http://127.0.0.1:{admin['SLO_ENGINE_ADMIN_PORT']}"
    yield from serving(process)


def scrape(server: VllmServerProcess) -> dict:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        return parse_metrics(response.read().decode())


def post(server: VllmServerProcess, path: str, body: dict, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(server.url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def counts(samples: dict, model: str = MODEL_NAME) -> dict[str, float]:
    """The series a request moves, by short name."""
    out = {f"{slo}/{good}": metric(samples, "slo_engine_slo_requests_total", slo=slo, good=good, model=model)
           for slo in SLOS for good in ("true", "false")}
    for endpoint in ("/v1/completions", "/v1/chat/completions"):
        for code in ("200", "404", "499"):
            out[f"{endpoint} {code}"] = metric(samples, "slo_engine_http_requests_total", endpoint=endpoint,
                                               code=code, model=model)
    out["prompt"] = metric(samples, "slo_engine_prompt_tokens_total", model=model) if model != "unknown" else 0
    out["generated"] = metric(samples, "slo_engine_generation_tokens_total", model=model) if model != "unknown" else 0
    return out


def moved(before: dict, after: dict) -> dict[str, float]:
    return {key: after[key] - before[key] for key in after if after[key] != before[key]}


def test_series_exist_at_zero_beside_vllms_own(vllm_server):
    samples = scrape(vllm_server)
    assert any(name.startswith("vllm:") for name, _ in samples), "vLLM's own series are still served"
    for slo in SLOS:
        for good in ("true", "false"):
            for model in (MODEL_NAME, "unknown"):
                assert (("slo_engine_slo_requests_total", frozenset({("slo", slo), ("good", good), ("model", model),
                                                                    ("model_name", MODEL_NAME)})) in samples)
    assert metric(samples, "slo_engine_ready") == 1
    assert metric(samples, "slo_engine_max_waiting_requests") == int(LIMITS["SLO_ENGINE_MAX_WAITING_REQUESTS"])
    assert not [name for name, _ in samples if name.startswith("slo_engine") and name.endswith("_created")]


@pytest.mark.parametrize(("body", "choices"), [
    ({"prompt": "Hello", "max_tokens": 6}, 1),
    ({"prompt": ["One", "Two more"], "n": 2, "max_tokens": 4, "seed": 1}, 4),  # 4 sequences, one request
], ids=["one prompt", "batched prompts with n=2"])
def test_a_completion_is_counted_and_judged_once_with_vllms_usage(vllm_server, body, choices):
    before = counts(scrape(vllm_server))
    status, answer = post(vllm_server, "/v1/completions", {"model": MODEL_NAME, **body})
    assert status == 200 and len(answer["choices"]) == choices
    usage = answer["usage"]
    assert moved(before, counts(scrape(vllm_server))) == {
        "/v1/completions 200": 1, "ttft-never/false": 1, "ttft-always/true": 1, "queue/true": 1,
        "prompt": usage["prompt_tokens"], "generated": usage["completion_tokens"]}


def test_a_streamed_chat_is_judged_on_the_first_token_the_client_got(vllm_server):
    before = counts(scrape(vllm_server))
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "stream": True,
            "stream_options": {"include_usage": True}}
    connection = http.client.HTTPConnection("127.0.0.1", vllm_server.port, timeout=60)
    connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    events = [json.loads(line[6:]) for line in response.read().decode().splitlines()
              if line.startswith("data: {")]
    connection.close()
    assert response.status == 200
    usage = events[-1]["usage"]
    assert moved(before, counts(scrape(vllm_server))) == {
        "/v1/chat/completions 200": 1, "ttft-never/false": 1, "ttft-always/true": 1, "queue/true": 1,
        "prompt": usage["prompt_tokens"], "generated": usage["completion_tokens"]}


def test_an_unknown_model_is_a_client_error_of_no_tenant_and_not_judged(vllm_server):
    before = counts(scrape(vllm_server), "unknown")
    status, answer = post(vllm_server, "/v1/completions", {"model": "../../etc/passwd", "prompt": "x"})
    assert status == 404 and "error" in answer
    samples = scrape(vllm_server)
    assert moved(before, counts(samples, "unknown")) == {"/v1/completions 404": 1}
    assert not [labels for name, labels in samples if ("model", "../../etc/passwd") in labels]


def test_probes_are_served_but_not_counted(vllm_server):
    before = counts(scrape(vllm_server))
    status, _ = post(vllm_server, "/v1/completions", {"model": MODEL_NAME, "prompt": "probe", "max_tokens": 1},
                     headers={PROBE_HEADER: "1"})
    assert status == 200
    assert moved(before, counts(scrape(vllm_server))) == {}


def test_a_client_that_leaves_mid_stream_is_a_499(vllm_server):
    body = {"model": MODEL_NAME, "prompt": "Once", "max_tokens": 400, "ignore_eos": True, "stream": True}
    # vLLM's API server on 2 busy cores can send a whole answer in one burst after the engine core
    # finished it: hanging up then comes after the end, rightly a 200. Such a try is taken again (3 at most).
    for attempt in range(3):
        before = counts(scrape(vllm_server))
        errors_before = metric(scrape(vllm_server), "slo_engine_request_errors_total", reason="client_disconnect",
                               model=MODEL_NAME)
        connection = http.client.HTTPConnection("127.0.0.1", vllm_server.port, timeout=60)
        connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200
        response.fp.readline()  # the first event, then hang up
        connection.sock.close()
        connection.close()
        for _ in range(100):
            samples = scrape(vllm_server)
            ended = moved(before, counts(samples))
            if ended.get("/v1/completions 499") or ended.get("/v1/completions 200"):
                break
        if not ended.get("/v1/completions 200"):
            break
    assert ended == {"/v1/completions 499": 1}, "not judged, no tokens counted"
    assert metric(samples, "slo_engine_request_errors_total", reason="client_disconnect",
                  model=MODEL_NAME) == errors_before + 1


def test_a_traced_request_continues_the_callers_trace_with_its_phases(vllm_server, otlp_receiver):
    """request -> GenAI -> queue / prefill / decode, as `slo-sidecar engine` draws it, under the caller's
    W3C traceparent; usage and finish reasons as vLLM's answer gives them."""
    traceparent = f"00-{INCOMING_TRACE[:-4]}beef-{INCOMING_PARENT}-01"
    request = urllib.request.Request(
        vllm_server.url + "/v1/completions", method="POST", headers={"Content-Type": "application/json",
                                                                     "traceparent": traceparent},
        data=json.dumps({"model": MODEL_NAME, "prompt": "trace me", "max_tokens": 6, "temperature": 0.5,
                         "top_p": 0.9, "ignore_eos": True}).encode())
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.load(response)
        assert response.headers["X-Trace-Id"] == INCOMING_TRACE[:-4] + "beef"
    spans = otlp_receiver.trace(INCOMING_TRACE[:-4] + "beef", complete_tree)
    named = check_tree(spans, "POST /v1/completions", f"text_completion {MODEL_NAME}")
    server, genai = named["POST /v1/completions"], named[f"text_completion {MODEL_NAME}"]
    assert server.parent_span_id == INCOMING_PARENT
    assert server.attributes["http.response.status_code"] == 200
    attributes = genai.attributes
    assert (attributes["gen_ai.request.max_tokens"], attributes["gen_ai.request.temperature"],
            attributes["gen_ai.request.top_p"]) == (6, 0.5, 0.9)
    assert attributes["gen_ai.usage.input_tokens"] == answer["usage"]["prompt_tokens"]
    assert attributes["gen_ai.usage.output_tokens"] == answer["usage"]["completion_tokens"] == 6
    assert attributes["gen_ai.response.id"] == answer["id"]
    assert attributes["gen_ai.response.finish_reasons"] == ["length"]
    assert genai.resource["k8s.pod.name"] == "engine-pod-0"
    # The request's duration bucket carries its trace id as an exemplar, in OpenMetrics.
    scraped = urllib.request.Request(vllm_server.url + "/metrics",
                                     headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    with urllib.request.urlopen(scraped, timeout=10) as response:
        text = response.read().decode()
    exemplars = [line for line in text.splitlines() if line.startswith(
        'slo_engine_http_request_duration_seconds_bucket{endpoint="/v1/completions"') and "# {" in line]
    assert any(f'trace_id="{INCOMING_TRACE[:-4]}beef"' in line for line in exemplars), exemplars


def test_a_request_for_more_sequences_than_admitted_is_429_before_vllm_sees_it(vllm_server):
    before = metric(scrape(vllm_server), "vllm:request_prompt_tokens_count")
    request = urllib.request.Request(
        vllm_server.url + "/v1/completions", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"model": MODEL_NAME, "prompt": "x", "n": MAX_NUM_SEQS + 3, "max_tokens": 2}).encode())
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 429 and refused.value.headers["Retry-After"] == "1"
    assert json.load(refused.value)["error"]["type"] == "TooManyRequestsError"
    samples = scrape(vllm_server)
    assert metric(samples, "vllm:request_prompt_tokens_count") == before, "vLLM never saw it"
    assert metric(samples, "slo_engine_request_errors_total", reason="overload", model=MODEL_NAME) == 1


def test_a_body_over_the_limit_is_413_and_one_nested_too_deep_400(vllm_server):
    status, answer = post(vllm_server, "/v1/completions", {"model": MODEL_NAME, "prompt": "x" * 70_000})
    assert status == 413 and "65536" in answer["error"]["message"]
    deep = b'{"prompt": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"  # vLLM alone answers 500 (RecursionError)
    request = urllib.request.Request(vllm_server.url + "/v1/completions", data=deep, method="POST",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 400


def set_faults(server: VllmServerProcess, token: str = ADMIN_TOKEN, **faults: object) -> tuple[int, dict]:
    request = urllib.request.Request(server.admin_url + "/admin/fault-injection", data=json.dumps(faults).encode(),
                                     method="POST", headers={"Content-Type": "application/json",
                                                             "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


@pytest.fixture
def faults(vllm_server):
    yield lambda **settings: set_faults(vllm_server, **settings)
    assert set_faults(vllm_server, error_ratio=0.0, delay_s=0.0, token_delay_s=0.0, model=None)[0] == 200


def test_ready_while_vllm_serves(vllm_server):
    with urllib.request.urlopen(vllm_server.url + "/ready", timeout=10) as response:
        assert response.status == 200 and json.load(response) == {"status": "ready"}


def test_injected_failures_are_spread_evenly_counted_and_judged(vllm_server, faults):
    assert faults(token="not-the-token")[0] == 401, "the admin listener wants its own token"
    assert faults(error_ratio=0.5)[0] == 200
    before = counts(scrape(vllm_server))
    statuses = [post(vllm_server, "/v1/completions", {"model": MODEL_NAME, "prompt": "f", "max_tokens": 2})[0]
                for _ in range(4)]
    assert sorted(statuses) == [200, 200, 500, 500], statuses
    changed = moved(before, counts(scrape(vllm_server)))
    assert changed["/v1/completions 200"] == 2 and changed["queue/false"] == 2 and changed["ttft-always/false"] == 2
    assert metric(scrape(vllm_server), "slo_engine_http_requests_total", code="500", model=MODEL_NAME) == 2


def test_a_request_past_its_timeout_is_504_and_a_stream_ends_with_an_error_event(vllm_server, faults):
    faults(delay_s=4.0)
    status, answer = post(vllm_server, "/v1/completions", {"model": MODEL_NAME, "prompt": "t", "max_tokens": 2})
    assert status == 504 and answer["error"]["code"] == 504
    faults(delay_s=0.0, token_delay_s=2.0)  # per chunk sent: the second one is due at 4 s, past the timeout
    body = {"model": MODEL_NAME, "prompt": "t", "max_tokens": 20, "ignore_eos": True, "stream": True}
    connection = http.client.HTTPConnection("127.0.0.1", vllm_server.port, timeout=60)
    connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    events = [line[6:] for line in response.read().decode().splitlines() if line.startswith("data: ")]
    connection.close()
    assert response.status == 200 and events[-1] == "[DONE]"
    assert json.loads(events[-2]).get("error", {}).get("code") == 504, (len(events), events[-3:])
    assert any(json.loads(event)["choices"][0]["text"] for event in events[:-2]), "tokens went out before it"
    assert metric(scrape(vllm_server), "slo_engine_http_requests_total", code="504", model=MODEL_NAME) == 2


def test_adapters_are_tenants_and_a_switch_between_them_a_cold_start(vllm_server):
    def cold(samples: dict) -> dict[str, float]:
        return {name: metric(samples, "slo_engine_lora_cold_starts_total", model=name) for name in ADAPTERS}

    before_samples = scrape(vllm_server)
    before, tenant_before = cold(before_samples), counts(before_samples, "legal")
    for name in ("medical", "medical", "legal", "medical"):
        assert post(vllm_server, "/v1/completions", {"model": name, "prompt": "lora", "max_tokens": 2})[0] == 200
    after = scrape(vllm_server)
    assert {name: cold(after)[name] - before[name] for name in ADAPTERS} == {"medical": 2, "legal": 1}
    assert moved(tenant_before, counts(after, "legal"))["/v1/completions 200"] == 1
