"""Request validation and response shapes: pure, fast, no engine."""

from __future__ import annotations

import json

import pytest

from engine.protocol import (
    ApiError,
    Choice,
    StreamEncoder,
    check_context_length,
    full_response,
    parse_generation_request,
    parse_json_body,
)

MODEL = "tiny-llama"


def parse(body: dict, kind: str = "completion"):
    return parse_generation_request(body, kind, MODEL)


def error_of(body: dict, kind: str = "completion") -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse(body, kind)
    return caught.value


def test_defaults_follow_openai():
    request = parse({"prompt": "hi"})
    assert (request.model, request.n, request.temperature, request.top_p) == (MODEL, 1, 1.0, 1.0)
    assert (request.max_tokens, request.stop, request.stream, request.include_usage) == (None, [], False, False)


def test_all_supported_fields_are_read():
    request = parse({"model": MODEL, "prompt": ["one prompt"], "max_tokens": 9, "temperature": 0, "top_p": 0.5,
                     "n": 2, "stop": "END", "seed": 3, "stream": True, "stream_options": {"include_usage": True},
                     "ignore_eos": True})
    assert request.prompt == "one prompt"
    assert (request.max_tokens, request.temperature, request.top_p, request.n) == (9, 0.0, 0.5, 2)
    assert (request.stop, request.seed, request.stream, request.include_usage, request.ignore_eos) == (
        ["END"], 3, True, True, True)


def test_token_id_prompts_and_chat_content_parts():
    assert parse({"prompt": [1, 2, 3]}).prompt_token_ids == [1, 2, 3]
    chat = parse({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                             {"type": "text", "text": "b"}]}]}, "chat")
    assert chat.messages == [{"role": "user", "content": "ab"}]


def test_chat_accepts_max_completion_tokens():
    assert parse({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 4}, "chat").max_tokens == 4


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "max_tokens": True}, "max_tokens"),   # a boolean is not an integer
    ({"prompt": "x", "temperature": float("nan")}, "temperature"),
    ({"prompt": "x", "top_p": 1.5}, "top_p"),
    ({"prompt": "x", "n": 129}, "n"),
    ({"prompt": [-1]}, "prompt"),
    ({"prompt": "x", "stop": [""]}, "stop"),
    ({"prompt": "x", "stream": True, "stream_options": {"include_usage": "y"}}, "stream_options.include_usage"),
    ({"prompt": "x", "model": 5}, "model"),
])
def test_invalid_fields_are_named(body, param):
    error = error_of(body)
    assert (error.status, error.param, error.reason) == (400, param, "validation")
    assert error.message.startswith(param)


def test_unknown_model_is_404_model_not_found():
    error = error_of({"prompt": "x", "model": "other"})
    assert (error.status, error.code, error.param) == (404, "model_not_found", "model")


def test_a_request_names_the_base_model_or_a_served_adapter():
    adapters = ("medical", "legal")
    assert parse_generation_request({"prompt": "x", "model": "legal"}, "completion", MODEL, adapters).model == "legal"
    assert parse_generation_request({"prompt": "x"}, "completion", MODEL, adapters).model == MODEL
    with pytest.raises(ApiError) as caught:
        parse_generation_request({"prompt": "x", "model": "finance"}, "completion", MODEL, adapters)
    assert caught.value.status == 404
    for name in (MODEL, "medical", "legal"):  # the error names every model served
        assert f"'{name}'" in caught.value.message


def test_json_body_must_be_an_object():
    assert parse_json_body(b'{"a": 1}') == {"a": 1}
    # Also what the parser itself refuses: a 5,000-digit integer (past Python's int-string limit)
    # and nesting deeper than its recursion limit.
    # And a lone UTF-16 surrogate escape, in a value or a key, at any depth: valid JSON syntax, but no
    # Unicode text (UTF-8 cannot encode it), so no tokenizer takes it; a surrogate pair is fine.
    assert parse_json_body(b'{"prompt": "\\ud83d\\ude00"}') == {"prompt": "\N{GRINNING FACE}"}
    for raw in (b"", b"\xff\xfe", b"null", b'"text"', b'{"seed": ' + b"9" * 5000 + b"}",
                b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}", b'{"prompt": "\\ud800"}',
                b'{"a": [{"b": {"\\udfff": 1}}]}', b'{"a": ' + b"[" * 500 + b'"\\ud800"' + b"]" * 500 + b"}"):
        with pytest.raises(ApiError) as caught:
            parse_json_body(raw)
        assert caught.value.status == 400 and caught.value.code == "invalid_json"


def test_context_length_fills_or_rejects():
    request = parse({"prompt": "x"})
    assert check_context_length(request, prompt_tokens=100, max_model_len=1024) == 924
    limited = parse({"prompt": "x", "max_tokens": 24})
    assert check_context_length(limited, 1000, 1024) == 24
    with pytest.raises(ApiError) as too_long:
        check_context_length(limited, 1001, 1024)
    assert too_long.value.param == "max_tokens" and too_long.value.code == "context_length_exceeded"
    with pytest.raises(ApiError) as prompt_too_long:
        check_context_length(parse({"messages": [{"role": "user", "content": "x"}]}, "chat"), 1024, 1024)
    assert prompt_too_long.value.param == "messages"


def test_error_body_has_openai_shape():
    body = ApiError(429, "slow down", code="queue_full", error_type="rate_limit_error", reason="overload").body()
    assert body == {"error": {"message": "slow down", "type": "rate_limit_error", "param": None,
                              "code": "queue_full"}}


def test_full_chat_response_shape():
    request = parse({"messages": [{"role": "user", "content": "x"}], "n": 2}, "chat")
    body = full_response(request, "chatcmpl-1", 100, [Choice(0, "a", "stop"), Choice(1, "bc", "length")], 5, 3)
    assert body["object"] == "chat.completion"
    assert body["choices"][1] == {"index": 1, "message": {"role": "assistant", "content": "bc"},
                                  "logprobs": None, "finish_reason": "length"}
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def decode(event: bytes) -> dict:
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    return json.loads(event[6:])


def test_stream_chunks_carry_usage_null_only_when_usage_is_asked_for():
    with_usage = StreamEncoder(parse({"prompt": "x", "stream": True, "stream_options": {"include_usage": True}}),
                               "cmpl-1", created=5)
    chunk = decode(with_usage.delta_chunk(0, "tok", None))
    assert chunk == {"id": "cmpl-1", "object": "text_completion", "created": 5, "model": MODEL,
                     "choices": [{"index": 0, "text": "tok", "logprobs": None, "finish_reason": None}],
                     "usage": None}
    assert decode(with_usage.usage_chunk(3, 4))["usage"] == {"prompt_tokens": 3, "completion_tokens": 4,
                                                             "total_tokens": 7}
    plain = StreamEncoder(parse({"prompt": "x", "stream": True}), "cmpl-2")
    assert "usage" not in decode(plain.delta_chunk(0, "tok", None))


def test_chat_stream_deltas():
    encoder = StreamEncoder(parse({"messages": [{"role": "user", "content": "x"}], "stream": True}, "chat"), "c")
    assert decode(encoder.role_chunk(0))["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert decode(encoder.delta_chunk(0, "hi", None))["choices"][0]["delta"] == {"content": "hi"}
    final = decode(encoder.delta_chunk(0, "", "stop"))["choices"][0]
    assert final["delta"] == {} and final["finish_reason"] == "stop"
    assert StreamEncoder.DONE == b"data: [DONE]\n\n"


@pytest.mark.parametrize("kind, body", [("completion", {"prompt": "x"}),
                                        ("chat", {"messages": [{"role": "user", "content": "x"}]})])
@pytest.mark.parametrize("usage", [True, False])
@pytest.mark.parametrize("text", ["tok", "", 'quote " and \\ backslash', "\u00e9\u2603\n\t\x1f", "</s>"])
def test_token_chunk_template_renders_what_json_would(kind, body, usage, text):
    options = {"stream_options": {"include_usage": True}} if usage else {}
    encoder = StreamEncoder(parse({**body, "stream": True, **options}, kind), 'id-"1"', created=9)
    chunk = decode(encoder.delta_chunk(12, text, None))
    expected_choice = {"index": 12, "logprobs": None, "finish_reason": None}
    expected_choice.update({"text": text} if kind == "completion" else {"delta": {"content": text} if text else {}})
    expected = {"id": 'id-"1"', "object": "text_completion" if kind == "completion" else "chat.completion.chunk",
                "created": 9, "model": MODEL, "choices": [expected_choice]}
    if usage:
        expected["usage"] = None
    assert chunk == expected


def test_seed_is_a_64_bit_integer():
    assert parse({"prompt": "x", "seed": 2**63 - 1}).seed == 2**63 - 1
    assert parse({"prompt": "x", "seed": -(2**63)}).seed == -(2**63)
    for seed in (2**63, -(2**63) - 1):
        error = error_of({"prompt": "x", "seed": seed})
        assert (error.status, error.param) == (400, "seed")
