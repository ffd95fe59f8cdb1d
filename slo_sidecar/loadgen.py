"""The load behind `slo-sidecar validate --url`: concurrent OpenAI requests, timed as a client sees them.

I/O only: it sends requests, records what each one did, and samples the
engine's /metrics while it runs. What the numbers mean against the SLO spec is
`gate.py`'s job.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field

import aiohttp

from .gate import samples_by_name


@dataclass(frozen=True)
class LoadSettings:
    url: str
    concurrency: int = 4
    requests: int = 100  # how many, unless duration_s is set
    duration_s: float | None = None
    prompt_tokens: int = 64  # approximate: words of filler text
    max_tokens: int = 32
    stream: bool = True
    endpoint: str = "completions"  # or "chat"
    model: str | None = None  # default: the first the server lists
    api_key: str | None = None
    timeout_s: float = 120.0
    metrics_url: str | None = None  # the engine's /metrics, when not beside the API (--metrics-port)

    @property
    def engine_metrics_url(self) -> str:
        return self.metrics_url or self.url + "/metrics"


@dataclass
class RequestResult:
    status: int  # HTTP status; 0 when the connection failed; 200 with error set when a stream broke
    started: float
    e2e_s: float
    ttft_s: float | None = None
    token_gaps_s: list[float] = field(default_factory=list)  # between consecutive content chunks
    output_tokens: int = 0
    prompt_tokens: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


@dataclass
class MemoryPeaks:
    engine_rss_bytes: float | None = None
    kv_cache_usage_ratio: float | None = None

    def observe(self, text: str) -> None:
        by_name = samples_by_name(text, {"process_resident_memory_bytes", "vllm:kv_cache_usage_perc"})
        for name, attribute in (("process_resident_memory_bytes", "engine_rss_bytes"),
                                ("vllm:kv_cache_usage_perc", "kv_cache_usage_ratio")):
            values = [value for _, value in by_name.get(name, [])]
            if values:
                setattr(self, attribute, max(max(values), getattr(self, attribute) or 0.0))


FILLER = ("the service level objective says how often the model must answer well and fast enough for its users "
          "so the error budget is what may fail before anyone is paged").split()


def prompt_of(words: int) -> str:
    return " ".join(FILLER[i % len(FILLER)] for i in range(max(1, words)))


def request_body(settings: LoadSettings, model: str) -> dict:
    body = {"model": model, "max_tokens": settings.max_tokens, "ignore_eos": True, "temperature": 0.0,
            "stream": settings.stream}
    if settings.stream:
        body["stream_options"] = {"include_usage": True}
    if settings.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt_of(settings.prompt_tokens)}]
    else:
        body["prompt"] = prompt_of(settings.prompt_tokens)
    return body


async def _one(session: aiohttp.ClientSession, settings: LoadSettings, body: dict) -> RequestResult:
    path = "/v1/chat/completions" if settings.endpoint == "chat" else "/v1/completions"
    started = time.monotonic()
    result = RequestResult(status=0, started=started, e2e_s=0.0)
    try:
        async with session.post(settings.url + path, json=body) as response:
            result.status = response.status
            if response.status != 200:
                result.error = (await response.text())[:200]
            elif settings.stream:
                await _read_stream(response, result, started)
            else:
                answer = await response.json()
                usage = answer.get("usage") or {}
                result.output_tokens = usage.get("completion_tokens", 0)
                result.prompt_tokens = usage.get("prompt_tokens", 0)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
        result.error = f"{type(error).__name__}: {error}"[:200]
    result.e2e_s = time.monotonic() - started
    return result


async def _read_stream(response: aiohttp.ClientResponse, result: RequestResult, started: float) -> None:
    last_chunk = None
    async for raw in response.content:
        line = raw.decode(errors="replace").strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[6:])
        if "error" in event:
            result.error = str(event["error"].get("message", event["error"]))[:200]
            return
        usage = event.get("usage")
        if usage:
            result.output_tokens = usage.get("completion_tokens", 0)
            result.prompt_tokens = usage.get("prompt_tokens", 0)
        for choice in event.get("choices", ()):
            text = choice.get("text") if "text" in choice else (choice.get("delta") or {}).get("content")
            if text:
                now = time.monotonic()
                if last_chunk is None:
                    result.ttft_s = now - started
                else:
                    result.token_gaps_s.append(now - last_chunk)
                last_chunk = now


async def first_model(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url + "/v1/models") as response:
        if response.status != 200:
            raise RuntimeError(f"{url}/v1/models answered HTTP {response.status}: {(await response.text())[:200]}")
        models = (await response.json()).get("data") or []
    if not models:
        raise RuntimeError(f"{url}/v1/models lists no model")
    return models[0]["id"]


async def fetch_metrics(session: aiohttp.ClientSession, url: str) -> str | None:
    """The engine's /metrics text, or None when it has none (the gate then judges from the client's view)."""
    try:
        async with session.get(url, headers={"Accept": "text/plain"}) as response:
            return await response.text() if response.status == 200 else None
    except aiohttp.ClientError:
        return None


class Progress:
    """A bar on a terminal; elsewhere (CI logs) a line every tenth of the way."""

    def __init__(self, total: float, unit: str, stream=sys.stderr):
        self.total, self.unit, self.stream = total, unit, stream
        self.tty = stream.isatty()
        self.shown_tenths = -1

    def update(self, done: float, failed: int) -> None:
        share = min(1.0, done / self.total) if self.total else 1.0
        if self.tty:
            bar = "#" * int(share * 30)
            self.stream.write(f"\r[{bar:<30}] {done:.0f}/{self.total:.0f} {self.unit}, {failed} failed ")
            self.stream.flush()
        elif int(share * 10) > self.shown_tenths:
            self.shown_tenths = int(share * 10)
            self.stream.write(f"validate: {share:.0%} ({done:.0f}/{self.total:.0f} {self.unit}, {failed} failed)\n")

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


@dataclass
class LoadRun:
    model: str
    results: list[RequestResult]
    wall_s: float
    metrics_before: str | None
    metrics_after: str | None
    peaks: MemoryPeaks


async def run_load(settings: LoadSettings, show_progress: bool = True) -> LoadRun:
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    timeout = aiohttp.ClientTimeout(total=settings.timeout_s)
    connector = aiohttp.TCPConnector(limit=settings.concurrency + 2)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector) as session:
        model = settings.model or await first_model(session, settings.url)
        body = request_body(settings, model)
        before = await fetch_metrics(session, settings.engine_metrics_url)
        peaks = MemoryPeaks()
        if before:
            peaks.observe(before)
        results: list[RequestResult] = []
        by_time = settings.duration_s is not None
        progress = None
        if show_progress:
            progress = Progress(settings.duration_s, "s") if by_time else Progress(settings.requests, "requests")
        started = time.monotonic()
        issued = failed = 0

        def more() -> bool:
            nonlocal issued
            if by_time:
                return time.monotonic() - started < settings.duration_s
            issued += 1
            return issued <= settings.requests

        async def worker() -> None:
            nonlocal failed
            while more():
                result = await _one(session, settings, body)
                results.append(result)
                failed += not result.ok
                if progress:
                    progress.update(time.monotonic() - started if by_time else len(results), failed)

        async def sample_memory() -> None:
            while True:
                await asyncio.sleep(0.5)
                text = await fetch_metrics(session, settings.engine_metrics_url)
                if text:
                    peaks.observe(text)

        sampler = asyncio.create_task(sample_memory())
        try:
            await asyncio.gather(*(worker() for _ in range(settings.concurrency)))
        finally:
            sampler.cancel()
            if progress:
                progress.close()
        wall_s = time.monotonic() - started
        await asyncio.sleep(0.2)  # the engine counts a request just after its last byte
        after = await fetch_metrics(session, settings.engine_metrics_url)
        if after:
            peaks.observe(after)
    return LoadRun(model, results, wall_s, before, after, peaks)
