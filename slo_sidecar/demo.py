"""`slo-sidecar demo`: start the real engine, send a few requests, show what /metrics says, stop.

Everything runs as real processes talking HTTP on loopback; every process the
demo starts is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from .processes import EngineProcess

# The /metrics lines worth looking at after a few requests.
INTERESTING_PREFIXES = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting{",
    "vllm:kv_cache_usage_perc",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
    "vllm:time_to_first_token_seconds_count",
    "vllm:time_to_first_token_seconds_sum",
    "vllm:e2e_request_latency_seconds_count",
    "slo_engine_http_requests_total",
    "slo_engine_request_errors_total",
    "slo_engine_ready",
)


def post_json(url: str, body: dict, timeout_s: float = 60.0) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.load(response)


def stream_chat(url: str, body: dict) -> tuple[str, dict | None, float]:
    """(text, usage, seconds to first token) of a streamed chat completion."""
    request = urllib.request.Request(url, data=json.dumps({**body, "stream": True}).encode(),
                                     headers={"Content-Type": "application/json"})
    started, first_token_s, text, usage = time.perf_counter(), float("nan"), "", None
    with urllib.request.urlopen(request, timeout=60) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            usage = event.get("usage") or usage
            for choice in event["choices"]:
                content = choice["delta"].get("content")
                if content:
                    if not text:
                        first_token_s = time.perf_counter() - started
                    text += content
    return text, usage, first_token_s


def run(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="slo-sidecar-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"demo: logs in {workdir}")
    with ExitStack() as stack:
        # Ctrl-C and SIGTERM both unwind the stack, which stops every process started here.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        engine = stack.enter_context(EngineProcess(workdir / "engine.log").start())
        base = engine.url
        print(f"demo: engine starting on {base} (vLLM on the embedded tiny model)...")
        print(f"demo: engine ready in {engine.wait_ready():.0f} s")

        completion = post_json(base + "/v1/completions", {"prompt": "An SLO is", "max_tokens": 16})
        print(f"\n[completion] {completion['choices'][0]['text']!r}  usage={completion['usage']}")
        chat = post_json(base + "/v1/chat/completions",
                         {"messages": [{"role": "user", "content": "How deep is the queue?"}], "max_tokens": 16})
        print(f"[chat]       {chat['choices'][0]['message']['content']!r}  usage={chat['usage']}")
        text, usage, ttft = stream_chat(base + "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "Stream, please."}], "max_tokens": 32, "ignore_eos": True,
            "stream_options": {"include_usage": True}})
        print(f"[streamed]   {text!r}  usage={usage}  first token after {ttft * 1000:.0f} ms")
        try:
            post_json(base + "/v1/completions", {"prompt": "x", "max_tokens": 0})
        except urllib.error.HTTPError as error:
            print(f"[bad input]  HTTP {error.code}: {json.load(error)['error']['message']}")

        with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
            metrics_text = response.read().decode()
        print("\n[/metrics] the interesting lines:")
        for line in metrics_text.splitlines():
            is_gauge = line.startswith(("vllm:num_requests", "vllm:kv_cache", "slo_engine_ready"))
            if line.startswith(INTERESTING_PREFIXES) and (is_gauge or not line.endswith(" 0.0")):
                print("  " + line)

        print("\ndemo: stopping the engine (SIGTERM: drain, then exit)")
        code = engine.stop()
        print(f"demo: engine exited with {code}")
        return 0 if code == 0 else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", help="where logs go (default: a new temporary directory)")
