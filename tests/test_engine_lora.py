"""A real engine serving the embedded model and LoRA adapters with vLLM's own flags: /v1/models lists
them with their parent, a request naming an adapter runs on it (greedy text differs from the base model's
and is the same every time), and an unknown name is a 404 naming the served ones."""

from __future__ import annotations

import dataclasses
import json

import pytest

from slo_sidecar.spec.golden import GoldenBaseline
from slo_sidecar.spec.load import DEFAULT_SPEC, load_spec
from tests.conftest import LORA_ADAPTERS as ADAPTERS  # retail: used by the cold-start test alone
from tests.conftest import run_async
from tests.helpers import REPO, EngineProcess, http_get, metric, parse_metrics
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


# --- Prompt log-probabilities beside an lm_head LoRA (engine/prompt_logprobs_guard.py) -----------------------

PROMPT_LOGPROB_ASKS = [  # (path, body): every way a client asks vLLM for the prompt's log-probabilities
    ("/v1/completions", {"model": "tiny-llama", "prompt": list(range(10, 45)), "max_tokens": 1, "prompt_logprobs": 0}),
    ("/v1/completions", {"model": "medical", "prompt": "the patient", "max_tokens": 1, "prompt_logprobs": 2}),
    ("/v1/completions", {"model": "tiny-llama", "prompt": "the patient", "max_tokens": 1, "echo": True, "logprobs": 1}),
    ("/v1/chat/completions", {"model": "legal", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1,
                              "echo": True}),
]


def validation_errors(engine: EngineProcess) -> float:
    return metric(parse_metrics(http_get(engine.url + "/metrics")[1].decode()), "slo_engine_request_errors_total",
                  reason="validation")


def completions_answered(engine: EngineProcess) -> float:
    """/v1/completions requests answered, probes included (the duration histogram counts every request)."""
    samples = parse_metrics(http_get(engine.url + "/metrics")[1].decode())
    return metric(samples, "slo_engine_http_request_duration_seconds_count", endpoint="/v1/completions")


def test_prompt_logprobs_beside_an_lm_head_lora_are_refused_and_the_engine_core_lives(lora_engine):
    """This engine's --lora-target-modules is unset, so vLLM puts a LoRA layer on lm_head. There, a request
    with prompt_logprobs batched with the adapters' requests killed vLLM 0.32's CPU engine core (an einsum
    shape error in the LoRA logits; vllm-project/vllm#16668): each way to ask for them is a 400 naming the
    fix, the adapters' requests running at the same time are served, and the engine lives on."""
    from concurrent.futures import ThreadPoolExecutor

    before = validation_errors(lora_engine)
    streams = [{"model": model, "prompt": "hello there " * 5, "max_tokens": 40, "ignore_eos": True}
               for model in ("medical", "legal", "medical")]
    with ThreadPoolExecutor(len(streams) + len(PROMPT_LOGPROB_ASKS)) as pool:
        running = [pool.submit(complete, lora_engine, body) for body in streams]
        asks = [pool.submit(complete, lora_engine, body, path) for path, body in PROMPT_LOGPROB_ASKS]
        refused = [ask.result() for ask in asks]
        served = [stream.result() for stream in running]
    for answer in refused:
        assert answer.status == 400, answer.body
        message = answer.json()["error"]["message"]
        assert "lm_head" in message and "--lora-target-modules" in message, message
    assert [answer.status for answer in served] == [200] * len(streams)
    assert validation_errors(lora_engine) - before == len(PROMPT_LOGPROB_ASKS)
    # Log-probabilities of the generated tokens are another path (the sampler's), not refused.
    answer = complete(lora_engine, {"model": "legal", "prompt": "x", "max_tokens": 2, "logprobs": 1})
    assert answer.status == 200 and answer.json()["choices"][0]["logprobs"]["token_logprobs"]
    assert http_get(lora_engine.url + "/health")[0] == 200


@run_async
async def test_the_sidecar_sends_no_golden_probe_to_a_lora_engine_it_cannot_tell_is_guarded(lora_engine):
    """The sidecar's golden prober, wired as `slo-sidecar sidecar --golden-baseline` wires it, on this LoRA
    engine: its /metrics carries our middleware's series, so the probe goes, is refused (400, the engine's
    reason in the error), and counts neither good nor bad. The same engine's exposition without our series (a
    `vllm serve` without the middleware, which cannot refuse) gets no probe at all: lora_unguarded."""
    from slo_sidecar.sidecar.app import wire
    from slo_sidecar.sidecar.config import SidecarConfig
    from slo_sidecar.sidecar.poller import PollError
    from slo_sidecar.spec.model import ENGINE_READY

    baseline = GoldenBaseline.from_json((REPO / "deploy/base/golden-baseline.json").read_text(), "baseline")
    config = dataclasses.replace(SidecarConfig(), engine_url=lora_engine.url, golden=baseline)
    for guarded in (True, False):
        wiring = wire(config, load_spec(str(DEFAULT_SPEC)))
        exposition = http_get(lora_engine.url + "/metrics")[1].decode()
        if not guarded:
            exposition = "\n".join(line for line in exposition.splitlines() if ENGINE_READY not in line) + "\n"
        wiring.engine.take(exposition)
        before = completions_answered(lora_engine)
        try:
            with pytest.raises(PollError) as raised:
                await wiring.golden.poll()
        finally:
            await wiring.golden.close()
        if guarded:
            assert raised.value.reason == "unscorable" and "answered 400" in str(raised.value), raised.value
            assert "lm_head" in str(raised.value)  # the engine's reason
            assert completions_answered(lora_engine) > before
        else:
            assert raised.value.reason == "lora_unguarded", raised.value
            assert completions_answered(lora_engine) == before  # nothing was sent
        assert wiring.golden.counts == {"good": 0, "bad": 0} and not wiring.golden.quarantined
