"""Property-based fuzzing of the real engine process: whatever a client sends, the engine answers it
with a 2xx or a 4xx JSON error, never a 5xx, never a traceback in its log; every rejection is counted
once under `validation`; and a normal request succeeds right after.

Examples per test: SLO_FUZZ_EXAMPLES (CI: the default here; `bench/fuzz.py` runs thousands).
With SLO_FUZZ_REPORT=PATH each test adds its tally to a JSON-lines file (the bench reads it).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from slo_sidecar.engine.tiny_model import VOCAB_SIZE  # out-of-vocabulary ids are drawn past the real vocabulary
from tests.conftest import API_KEY
from tests.helpers import http_get, metric, parse_metrics
from tests.raw_http import RawAnswer, exchange, request_bytes

pytestmark = pytest.mark.engine

EXAMPLES = int(os.environ.get("SLO_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
AUTH = ("Authorization", f"Bearer {API_KEY}")
JSON_TYPE = ("Content-Type", "application/json")
GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions")
CONTEXT = 1024  # the session engine's --max-model-len

# --- What a hostile client sends --------------------------------------------------------------

huge_ints = st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**30, -(10**30), 2**1000])
hostile_numbers = st.one_of(
    st.integers(), huge_ints, st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([1e308, -1e308, 5e-324]),
)
json_scalars = st.one_of(st.none(), st.booleans(), hostile_numbers, st.text(max_size=40))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)), max_leaves=20)

token_ids = st.one_of(st.integers(0, VOCAB_SIZE - 1), st.integers(VOCAB_SIZE, 2**40), st.integers(-(2**40), -1))
prompts = st.one_of(
    st.text(min_size=1, max_size=60),
    st.lists(token_ids, min_size=1, max_size=12),
    # at and past the context: a long token-id prompt with a few tokens to generate
    st.integers(CONTEXT - 12, CONTEXT + 4).map(lambda length: [7] * length),
    json_values,
)
messages = st.one_of(
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool", ""]),
                                    "content": st.one_of(st.text(max_size=40), json_scalars)}),
             min_size=0, max_size=4),
    json_values,
)
small_max_tokens = st.integers(1, 8)  # valid generations stay short: they must finish within the 5 s timeout
field_values = {
    "model": st.one_of(st.just("tiny-llama"), st.text(max_size=20), json_scalars),
    "max_tokens": st.one_of(small_max_tokens, st.integers(-5, 0), st.integers(CONTEXT - 2, CONTEXT + 2), huge_ints,
                            json_scalars),
    "n": st.one_of(st.integers(1, 2), st.integers(-2, 0), st.sampled_from([128, 129, 2**31]), json_scalars),
    "temperature": st.one_of(st.floats(0, 2), st.floats(-10, 10), hostile_numbers, json_scalars),
    "top_p": st.one_of(st.floats(0, 1), hostile_numbers, json_scalars),
    "seed": st.one_of(st.integers(-(2**63), 2**63 - 1), huge_ints, json_scalars),
    "stream": st.one_of(st.booleans(), json_scalars),
    "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": st.booleans()}), json_values),
    "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=6),
                      st.integers(4, 3000).map(lambda k: [f"s{i}" for i in range(k)]), json_scalars),
    "ignore_eos": st.one_of(st.booleans(), json_scalars),
    "user": json_scalars,
}


@st.composite
def generation_bodies(draw) -> tuple[str, object]:
    """A request body that is mostly right, with fields missing, mistyped, out of range or unknown."""
    path = draw(st.sampled_from(GENERATION_PATHS))
    body: dict = {"prompt": draw(prompts)} if path == "/v1/completions" else {"messages": draw(messages)}
    body["max_tokens"] = draw(small_max_tokens)
    for name in draw(st.lists(st.sampled_from(sorted(field_values)), max_size=4, unique=True)):
        body[name] = draw(field_values[name])
    if draw(st.booleans()):
        body[draw(st.text(min_size=1, max_size=12))] = draw(json_values)  # an unknown field
    if draw(st.integers(0, 9)) == 0:
        return path, draw(json_values)  # not even an object
    return path, body


def _deep(depth: int) -> bytes:
    return b'{"prompt": ' + b"[" * depth + b"]" * depth + b"}"


raw_bodies = st.one_of(
    st.binary(max_size=200),  # invalid UTF-8 and anything else
    st.sampled_from([
        b"", b"{", b"null", b"[]", b'"prompt"', b"NaN", b"Infinity", b"-Infinity",
        b'{"prompt": "x", "temperature": NaN}', b'{"prompt": "x", "top_p": Infinity}',
        b'{"prompt": "x", "max_tokens": -Infinity}',
        b'{"prompt": "x", "seed": ' + b"9" * 5000 + b"}", b'{"prompt": "x", "max_tokens": 1e999}',
        b'{"prompt": "a", "prompt": 7}', b'{"prompt": "a", "max_tokens": 2, "max_tokens": "x"}',
        b'{"prompt": "\\ud800"}', b'{"prompt": "\xff\xfe"}', b'\xef\xbb\xbf{"prompt": "bom", "max_tokens": 1}',
    ]),
    st.integers(50, 20000).map(_deep),
)

content_types = st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded",
                                 "multipart/form-data; boundary=x", "application/json; charset=latin-1", ""])
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "BREW", "TRACE",
                           "CONNECT", "P\x00ST", "get", "POST /x"])
paths = st.one_of(
    st.sampled_from([*GENERATION_PATHS, "/v1/models", "/health", "/ready", "/metrics", "/admin/fault-injection",
                     "/", "/v1/../metrics", "/v1/completions?x=1&x=2", "/%00", "/v1/%2e%2e/metrics", "//v1//completions",
                     "/v1/completions/", "*", "http://evil.example/v1/completions"]),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=60).map(
        lambda text: "/" + text),
    st.integers(1000, 20000).map(lambda n: "/" + "a" * n),
)
header_names = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"),
                       min_size=1, max_size=20)
header_values = st.one_of(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
                          st.integers(1000, 20000).map(lambda n: "v" * n))


@st.composite
def raw_requests(draw) -> tuple[bytes, bool, bool]:
    """Framing a real client library would never produce: (bytes, the client stops sending early,
    bytes follow the request as its framing declares it, which the server may read as a second request)."""
    method, path = draw(methods), draw(paths)
    headers = [AUTH] if draw(st.booleans()) else []
    if draw(st.booleans()):
        headers.append(("Content-Type", draw(content_types)))
    headers += draw(st.lists(st.tuples(header_names, header_values), max_size=3))
    if draw(st.integers(0, 5)) == 0:
        headers += [(f"X-Many-{i}", "x") for i in range(draw(st.integers(50, 300)))]
    body = draw(st.one_of(raw_bodies, st.just(b'{"prompt": "framing", "max_tokens": 2}')))
    framing = draw(st.sampled_from(["length", "short", "long", "none", "chunked", "bad-chunked", "both"]))
    if framing == "length":
        return request_bytes(method, path, headers, body), False, False
    if framing == "short":  # Content-Length says less than comes
        return request_bytes(method, path, headers, body, content_length=len(body) // 2), False, len(body) > 0
    if framing == "long":  # Content-Length says more than comes: the client stops sending
        return request_bytes(method, path, headers, body, content_length=len(body) + 100), True, False
    if framing == "none":  # a body with neither Content-Length nor chunking
        return request_bytes(method, path, headers, body, content_length=-1), False, len(body) > 0
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    if framing == "bad-chunked":
        chunked = b"zz\r\n" + body + b"\r\n"
    headers.append(("Transfer-Encoding", "chunked"))
    if framing == "both":
        return request_bytes(method, path, headers, b"", content_length=len(chunked)) + chunked, False, False
    return request_bytes(method, path, headers, b"") + chunked, framing == "bad-chunked", False


# --- Invariants -------------------------------------------------------------------------------

class Tally:
    """What the engine answered in one test, and what its counters and log said."""

    def __init__(self, engine, name: str):
        self.engine, self.name = engine, name
        self.codes: Counter[str] = Counter()
        self.seconds = 0  # requests sent behind another on one connection: rejected, never answered
        self.log_offset = engine.log_path.stat().st_size
        self.before = self.scrape()
        self.started = time.monotonic()

    def scrape(self) -> dict:
        status, body = http_get(self.engine.url + "/metrics", timeout=10)
        assert status == 200
        return parse_metrics(body.decode())

    def record(self, answer: RawAnswer, has_body: bool = True, second: bool = False) -> None:
        """One answer; `has_body` False for HEAD, whose answers carry headers only; `second` when a
        malformed request followed on the same connection (the server closes after the first answer, but
        may have parsed, rejected and counted the second)."""
        self.seconds += second
        key = "closed" if answer.status is None else str(answer.status)
        self.codes[key] += 1
        assert answer.status is None or answer.status < 500, (answer.status, answer.body[:300])
        if has_body and answer.status is not None and answer.status >= 400 and answer.headers.get(
                "content-type", "").startswith("application/json"):
            error = answer.json()["error"]
            assert error["message"] and error["type"], error

    def check(self) -> None:
        """The invariants over the whole test: counted once each, no traceback, still serving."""
        after = self.scrape()
        new_log = self.engine.log_path.read_bytes()[self.log_offset:].decode(errors="replace")
        assert "Traceback" not in new_log, new_log[-3000:]
        rejected = sum(n for code, n in self.codes.items() if code.startswith("4") and code not in ("401", "429"))
        validation = (metric(after, "slo_engine_request_errors_total", reason="validation")
                      - metric(self.before, "slo_engine_request_errors_total", reason="validation"))
        counted = metric(after, "slo_engine_http_requests_total") - metric(self.before, "slo_engine_http_requests_total")
        # Each rejection counted once under validation; each request counted once under its code, answered
        # or not (a client that hangs up mid-body is a 499; a request line too long to read to its end
        # is a 400 the server sends as the client's socket is reset, so the client reads nothing); the
        # /metrics scrape that opened this tally counts too.
        rejected_max = rejected + self.seconds + self.codes["closed"]
        assert rejected <= validation <= rejected_max, (validation, self.seconds, dict(self.codes))
        sent = sum(self.codes.values())
        assert sent + 1 <= counted <= sent + 1 + self.seconds, (counted, self.seconds, dict(self.codes))
        normal = exchange(self.engine.port, request_bytes("POST", "/v1/completions", [AUTH, JSON_TYPE], json.dumps(
            {"prompt": "after the fuzz", "max_tokens": 4}).encode()))
        assert normal.status == 200, normal.body
        assert normal.json()["usage"]["completion_tokens"] >= 1
        report = os.environ.get("SLO_FUZZ_REPORT")
        if report:
            with open(report, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"test": self.name, "examples": sum(self.codes.values()),
                                         "codes": dict(self.codes), "tracebacks": new_log.count("Traceback"),
                                         "seconds": round(time.monotonic() - self.started, 1)}) + "\n")


def test_fuzzed_request_bodies_never_get_a_5xx(engine):
    tally = Tally(engine, "bodies")

    @FUZZ
    @given(generation_bodies())
    def send(case):
        path, body = case
        data = json.dumps(body).encode()
        tally.record(exchange(engine.port, request_bytes("POST", path, [AUTH, JSON_TYPE], data)))

    send()
    tally.check()
    assert tally.codes["200"] > 0 and tally.codes["400"] > 0, tally.codes  # both kinds were tried


def test_fuzzed_raw_bodies_never_get_a_5xx(engine):
    tally = Tally(engine, "raw-bodies")

    @FUZZ
    @given(st.sampled_from(GENERATION_PATHS), raw_bodies, content_types)
    def send(path, body, content_type):
        headers = [AUTH] + ([("Content-Type", content_type)] if content_type else [])
        tally.record(exchange(engine.port, request_bytes("POST", path, headers, body)))

    send()
    tally.check()


def test_fuzzed_http_framing_never_gets_a_5xx(engine):
    tally = Tally(engine, "framing")

    @FUZZ
    @given(raw_requests())
    def send(case):
        data, stops_early, followed = case
        tally.record(exchange(engine.port, data, half_close=stops_early), has_body=not data.startswith(b"HEAD "),
                     second=followed)

    send()
    tally.check()
