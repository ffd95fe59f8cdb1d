"""The OpenAI-compatible wire format: request validation and response shapes.

Pure code, no I/O: every check that can be made without the tokenizer lives
here, so each bad-input case is a fast unit test and the server only maps
ApiError to an HTTP response.
"""

from __future__ import annotations

import hmac
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Collection, Literal

Kind = Literal["completion", "chat"]

MAX_N = 128
MAX_STOP_SEQUENCES = 4
CHAT_ROLES = ("system", "user", "assistant")


class ApiError(Exception):
    """An error the client is told about, in OpenAI's error-body shape.

    `reason` is the bounded label under which the error is counted.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        error_type: str = "invalid_request_error",
        reason: str = "validation",
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.error_type = error_type
        self.reason = reason
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


# A seed is a 64-bit signed integer, as vLLM's own server bounds it (torch.long).
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1


def bearer_matches(authorization: str, secret: str) -> bool:
    """Whether an 'Authorization: Bearer X' header carries `secret` (compared in constant time)."""
    scheme, _, supplied = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(supplied.strip().encode(), secret.encode())


def invalid(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param, code=code)


@dataclass(frozen=True)
class GenerationRequest:
    """A validated completion or chat request, independent of the wire format."""

    kind: Kind
    model: str
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    messages: list[dict[str, str]] | None = None
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    ignore_eos: bool = False


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; 400 for anything else, including what the parser itself refuses
    (an integer of thousands of digits is Python's ValueError, deep nesting its RecursionError)."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise ApiError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, "request body is not valid JSON: nested too deeply", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_json")
    if not _all_text_is_unicode(body):
        raise ApiError(400, "request body is not valid JSON: a string holds a lone UTF-16 surrogate "
                       "(such as \\ud800), which is no Unicode text", code="invalid_json")
    return body


def _all_text_is_unicode(value: Any) -> bool:
    """False if any string (key or value) holds a lone surrogate: JSON's \\uD800 escapes decode to one,
    and no tokenizer can encode it. Walked with a stack: nesting depth costs no recursion."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def parse_generation_request(body: dict[str, Any], kind: Kind, served_model: str,
                             adapters: Collection[str] = ()) -> GenerationRequest:
    """Validate an OpenAI request body; raise ApiError naming the first bad field.

    `model` is the base model's served name (the default) or one of the LoRA adapters' names.
    """
    reader = _FieldReader(body)
    model = reader.string("model", default=served_model)
    if model != served_model and model not in adapters:
        served = ", ".join(f"'{name}'" for name in (served_model, *adapters))
        raise ApiError(
            404,
            f"model: the model '{model}' does not exist; this server serves {served}",
            param="model",
            code="model_not_found",
        )
    prompt, prompt_token_ids, messages = None, None, None
    if kind == "completion":
        prompt, prompt_token_ids = _read_prompt(body)
    else:
        messages = _read_messages(body)
    stream = reader.boolean("stream", default=False)
    include_usage = False
    options = reader.optional_object("stream_options")
    if options is not None:
        if not stream:
            raise invalid("stream_options", "only allowed when stream is true")
        include_usage = _FieldReader(options, prefix="stream_options.").boolean("include_usage", default=False)
    max_tokens_field = "max_completion_tokens" if kind == "chat" and "max_completion_tokens" in body else "max_tokens"
    return GenerationRequest(
        kind=kind,
        model=model,
        prompt=prompt,
        prompt_token_ids=prompt_token_ids,
        messages=messages,
        max_tokens=reader.integer(max_tokens_field, default=None, minimum=1),
        temperature=reader.number("temperature", default=1.0, minimum=0.0, maximum=2.0),
        top_p=reader.number("top_p", default=1.0, minimum=0.0, maximum=1.0, exclusive_minimum=True),
        n=reader.integer("n", default=1, minimum=1, maximum=MAX_N),
        stop=_read_stop(body),
        seed=reader.integer("seed", default=None, minimum=SEED_MIN, maximum=SEED_MAX),
        stream=stream,
        include_usage=include_usage,
        ignore_eos=reader.boolean("ignore_eos", default=False),
    )


class _FieldReader:
    """Typed access to optional JSON fields, each failure naming its field."""

    def __init__(self, body: dict[str, Any], prefix: str = ""):
        self.body = body
        self.prefix = prefix

    def _get(self, name: str) -> Any:
        return self.body.get(name)

    def string(self, name: str, default: str) -> str:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, str):
            raise invalid(self.prefix + name, f"expected a string, got {_type_name(value)}", "invalid_type")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise invalid(self.prefix + name, f"expected a boolean, got {_type_name(value)}", "invalid_type")
        return value

    def integer(self, name: str, default: int | None, minimum: int | None = None,
                maximum: int | None = None) -> int | None:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid(self.prefix + name, f"expected an integer, got {_type_name(value)}", "invalid_type")
        _check_range(self.prefix + name, value, minimum, maximum)
        return value

    def number(self, name: str, default: float, minimum: float, maximum: float,
               exclusive_minimum: bool = False) -> float:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise invalid(self.prefix + name, f"expected a number, got {_type_name(value)}", "invalid_type")
        if exclusive_minimum and value <= minimum:
            raise invalid(self.prefix + name, f"must be > {minimum} and <= {maximum}, got {value}")
        _check_range(self.prefix + name, value, minimum, maximum)
        return float(value)

    def optional_object(self, name: str) -> dict[str, Any] | None:
        value = self._get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise invalid(self.prefix + name, f"expected an object, got {_type_name(value)}", "invalid_type")
        return value


def _check_range(name: str, value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise invalid(name, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise invalid(name, f"must be <= {maximum}, got {value}")


def _read_prompt(body: dict[str, Any]) -> tuple[str | None, list[int] | None]:
    if "prompt" not in body:
        raise invalid("prompt", "this field is required", "missing_required_field")
    prompt = body["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one is the same request
    if isinstance(prompt, str):
        if not prompt:
            raise invalid("prompt", "must not be empty")
        return prompt, None
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        if any(t < 0 for t in prompt):
            raise invalid("prompt", "token ids must be >= 0")
        return None, list(prompt)
    if isinstance(prompt, list) and len(prompt) > 1:
        raise invalid("prompt", "batched prompts are not supported; send one request per prompt")
    raise invalid("prompt", f"expected a non-empty string or list of token ids, got {_type_name(prompt)}",
                  "invalid_type")


def _read_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    if "messages" not in body:
        raise invalid("messages", "this field is required", "missing_required_field")
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "expected a non-empty list of messages", "invalid_type")
    parsed = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise invalid(where, f"expected an object, got {_type_name(message)}", "invalid_type")
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise invalid(f"{where}.role", f"expected one of {', '.join(CHAT_ROLES)}, got {role!r}")
        content = message.get("content")
        if isinstance(content, list):  # the content-parts form; only text parts are meaningful here
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise invalid(f"{where}.content", "only text content parts are supported", "invalid_type")
            content = "".join(part["text"] for part in content)
        if not isinstance(content, str):
            raise invalid(f"{where}.content", f"expected a string, got {_type_name(content)}", "invalid_type")
        parsed.append({"role": role, "content": content})
    return parsed


def _read_stop(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise invalid("stop", "expected a non-empty string or a list of non-empty strings", "invalid_type")
    if len(stop) > MAX_STOP_SEQUENCES:
        raise invalid("stop", f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(stop)}")
    return stop


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def check_context_length(request: GenerationRequest, prompt_tokens: int, max_model_len: int) -> int:
    """The max_tokens to give vLLM, or ApiError if the request cannot fit the context."""
    prompt_field = "prompt" if request.kind == "completion" else "messages"
    if prompt_tokens >= max_model_len:
        raise invalid(
            prompt_field,
            f"this model's maximum context length is {max_model_len} tokens, "
            f"but the prompt has {prompt_tokens} tokens",
            "context_length_exceeded",
        )
    if request.max_tokens is None:
        return max_model_len - prompt_tokens
    if prompt_tokens + request.max_tokens > max_model_len:
        raise invalid(
            "max_tokens",
            f"this model's maximum context length is {max_model_len} tokens; the prompt has "
            f"{prompt_tokens} tokens and max_tokens asks for {request.max_tokens} more",
            "context_length_exceeded",
        )
    return request.max_tokens


# --- Responses -------------------------------------------------------------------------------


@dataclass
class Choice:
    index: int
    text: str = ""
    finish_reason: str | None = None


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def full_response(request: GenerationRequest, response_id: str, created: int, choices: list[Choice],
                  prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    if request.kind == "completion":
        object_name = "text_completion"
        rendered = [{"index": c.index, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
                    for c in choices]
    else:
        object_name = "chat.completion"
        rendered = [{"index": c.index, "message": {"role": "assistant", "content": c.text},
                     "logprobs": None, "finish_reason": c.finish_reason} for c in choices]
    return {
        "id": response_id,
        "object": object_name,
        "created": created,
        "model": request.model,
        "choices": rendered,
        "usage": usage_body(prompt_tokens, completion_tokens),
    }


class StreamEncoder:
    """Builds the server-sent events of one streamed response.

    Token chunks are the hot path (one per token per stream), so their JSON is
    rendered once per response as a template around the index and the text;
    the rarer chunks go through json.dumps.
    """

    def __init__(self, request: GenerationRequest, response_id: str, created: int | None = None):
        self.request = request
        self.created = int(time.time()) if created is None else created
        chunk_object = "text_completion" if request.kind == "completion" else "chat.completion.chunk"
        self._head = {"id": response_id, "object": chunk_object, "created": self.created, "model": request.model}
        self._usage_field = {"usage": None} if request.include_usage else {}
        head = json.dumps(self._head, separators=(",", ":"))[:-1]  # without its closing brace
        tail = ',"usage":null}' if request.include_usage else "}"
        text_key = '"text":' if request.kind == "completion" else '"delta":{"content":'
        text_end = "" if request.kind == "completion" else "}"
        self._token_template = (
            f'data: {head},"choices":[{{"index":'.encode(),
            f",{text_key}".encode(),
            f'{text_end},"logprobs":null,"finish_reason":null}}]{tail}\n\n'.encode(),
        )

    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return b"data: " + json.dumps({**self._head, "choices": choices, **extra},
                                      separators=(",", ":")).encode() + b"\n\n"

    def role_chunk(self, index: int) -> bytes:
        """Chat streams open each choice with the assistant role, as OpenAI's do."""
        return self._event([{"index": index, "delta": {"role": "assistant", "content": ""},
                             "logprobs": None, "finish_reason": None}], **self._usage_field)

    def delta_chunk(self, index: int, text: str, finish_reason: str | None) -> bytes:
        if finish_reason is None and (text or self.request.kind == "completion"):
            before_index, before_text, after_text = self._token_template
            return b"".join((before_index, str(index).encode(), before_text, json.dumps(text).encode(),
                             after_text))
        if self.request.kind == "completion":
            choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}
        else:
            delta = {"content": text} if text else {}
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self._event([choice], **self._usage_field)

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        return self._event([], usage=usage_body(prompt_tokens, completion_tokens))

    @staticmethod
    def error_event(error: ApiError) -> bytes:
        return b"data: " + json.dumps(error.body(), separators=(",", ":")).encode() + b"\n\n"

    DONE = b"data: [DONE]\n\n"
