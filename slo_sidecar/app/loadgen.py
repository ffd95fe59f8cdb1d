"""The load behind `slo-sidecar validate --url`: concurrent OpenAI requests, timed as a client sees them.

I/O only: it sends requests, records what each one did, and samples the
engine's /metrics while it runs. What the numbers mean against the SLO spec is
`gate.py`'s job.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

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
    model: str | None = None  # default: the first the server lists (unless tenants are given)
    # The tenants, (served name, weight): requests spread over them in proportion to the weights, in
    # a fixed order (`weighted_order`). Empty: every request goes to `model`.
    tenants: tuple[tuple[str, float], ...] = ()
    api_key: str | None = None
    timeout_s: float = 120.0
    # Open loop: requests arrive as a Poisson process at this rate (as vLLM's benchmark sends them),
    # whatever the server's pace; `concurrency` is then not a limit. None: `concurrency` clients in a loop.
    rate_rps: float | None = None
    seed: int = 1  # of the arrival times: the same run sends at the same moments
    # Requests from a JSON-lines file (`read_request_file`), sent in turn, instead of one shape for all.
    request_mix: tuple[tuple[str, int], ...] = ()  # (prompt, max_tokens)
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
    model: str = ""  # the served name the request asked for (its tenant)

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


def weighted_order(tenants: Sequence[tuple[str, float]]) -> Iterator[str]:
    """The tenants' names, endlessly, each in proportion to its weight: smooth weighted round robin
    (nginx's), in exact arithmetic, ties to the first listed. Deterministic, so a run of N requests
    sends each tenant a known number: (a, 3), (b, 1) gives a a b a, a a b a, ...: every whole cycle (the
    weights' sum, for whole weights) holds each tenant exactly its weight, interleaved, not in runs."""
    if not tenants:
        raise ValueError("no tenants to spread requests over")
    weights = [Fraction(weight) for _, weight in tenants]  # exact: a float's Fraction is its exact value
    if any(weight <= 0 for weight in weights):
        raise ValueError("every weight must be > 0")
    total = sum(weights)
    current = [Fraction(0)] * len(tenants)
    while True:
        current = [c + w for c, w in zip(current, weights)]
        chosen = max(range(len(tenants)), key=lambda i: (current[i], -i))
        current[chosen] -= total
        yield tenants[chosen][0]


def spread(tenants: Sequence[tuple[str, float]], requests: int) -> dict[str, int]:
    """How many of the first `requests` go to each tenant, as the load sends them."""
    counts = {name: 0 for name, _ in tenants}
    order = weighted_order(tenants)
    for _ in range(requests):
        counts[next(order)] += 1
    return counts


def poisson_arrivals(rate_rps: float, seed: int, duration_s: float | None = None,
                     count: int | None = None) -> list[float]:
    """Arrival times, seconds from the start, of a Poisson process at `rate_rps` (exponential gaps, mean
    1 / rate): those before `duration_s`, or the first `count`. Seeded: reproducible."""
    if (duration_s is None) == (count is None):
        raise ValueError("give a duration or a count")
    rng, at, times = random.Random(seed), 0.0, []
    while True:
        at += rng.expovariate(rate_rps)
        if (duration_s is not None and at >= duration_s) or (count is not None and len(times) >= count):
            return times
        times.append(at)


class RequestFileError(ValueError):
    """A request file that cannot be used: its message names the file, the line and the reason."""


def read_request_file(path: str) -> tuple[tuple[str, int], ...]:
    """(prompt, max_tokens) per line of a JSON-lines file: {"prompt": "...", "max_tokens": 64}, or
    {"prompt_tokens": 512, "max_tokens": 64} for a prompt of that many words of filler."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise RequestFileError(f"{path}: {getattr(error, 'strerror', None) or error}") from None
    mix = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as error:
            raise RequestFileError(f"{path}:{number}: not JSON: {error}") from None
        if not isinstance(entry, dict):
            raise RequestFileError(f"{path}:{number}: expected an object with prompt or prompt_tokens, and max_tokens")
        max_tokens, words = entry.get("max_tokens"), entry.get("prompt_tokens")
        prompt = entry.get("prompt", prompt_of(words) if _positive_int(words) else None)
        if not isinstance(prompt, str) or not prompt or not _positive_int(max_tokens):
            raise RequestFileError(f"{path}:{number}: expected a non-empty \"prompt\" (or \"prompt_tokens\" > 0) "
                                   f"and \"max_tokens\" > 0, got {line.strip()[:120]}")
        mix.append((prompt, max_tokens))
    if not mix:
        raise RequestFileError(f"{path}: no requests in it")
    return tuple(mix)


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def request_body(settings: LoadSettings, model: str, prompt: str | None = None,
                 max_tokens: int | None = None) -> dict:
    """One request's body: the settings' shape, or a request file's prompt and length."""
    body = {"model": model, "max_tokens": max_tokens or settings.max_tokens, "ignore_eos": True,
            "temperature": 0.0, "stream": settings.stream}
    if settings.stream:
        body["stream_options"] = {"include_usage": True}
    text = prompt_of(settings.prompt_tokens) if prompt is None else prompt
    if settings.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = text
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


async def served_models(session: aiohttp.ClientSession, url: str) -> list[str]:
    """The names /v1/models lists (the base model first, then any LoRA adapters)."""
    async with session.get(url + "/v1/models") as response:
        if response.status != 200:
            raise RuntimeError(f"{url}/v1/models answered HTTP {response.status}: {(await response.text())[:200]}")
        models = (await response.json()).get("data") or []
    if not models:
        raise RuntimeError(f"{url}/v1/models lists no model")
    return [str(entry["id"]) for entry in models]


async def first_model(session: aiohttp.ClientSession, url: str) -> str:
    return (await served_models(session, url))[0]


async def check_tenants(session: aiohttp.ClientSession, url: str, tenants: Sequence[tuple[str, float]]) -> None:
    """Every tenant must be a name the server serves: a typo would only collect 404s, judged as nothing."""
    served = await served_models(session, url)
    unknown = [name for name, _ in tenants if name not in served]
    if unknown:
        raise RuntimeError(f"--model {', '.join(unknown)}: not served there (it serves {', '.join(served)})")


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
    model: str  # the one model loaded, or the tenants' names joined with commas
    results: list[RequestResult]
    wall_s: float
    metrics_before: str | None
    metrics_after: str | None
    peaks: MemoryPeaks


async def run_load(settings: LoadSettings, show_progress: bool = True) -> LoadRun:
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    timeout = aiohttp.ClientTimeout(total=settings.timeout_s)
    # Open loop: as many connections as requests in flight (the server's admission turns the excess away).
    connector = aiohttp.TCPConnector(limit=0 if settings.rate_rps else settings.concurrency + 2)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector) as session:
        if settings.tenants:
            await check_tenants(session, settings.url, settings.tenants)
            model = ",".join(name for name, _ in settings.tenants)
            order = weighted_order(settings.tenants)
            bodies = {name: request_body(settings, name) for name, _ in settings.tenants}
        else:
            model = settings.model or await first_model(session, settings.url)
            order = None
            bodies = {model: request_body(settings, model)}
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

        mix = itertools.count()

        def body_for(target: str) -> dict:
            """The model's body; with a request file, its next request (in turn, in the order of sending)."""
            if not settings.request_mix:
                return bodies[target]
            prompt, max_tokens = settings.request_mix[next(mix) % len(settings.request_mix)]
            return request_body(settings, target, prompt, max_tokens)

        async def send(target: str) -> None:
            nonlocal failed
            result = await _one(session, settings, body_for(target))
            result.model = target
            results.append(result)
            failed += not result.ok
            if progress:
                progress.update(time.monotonic() - started if by_time else len(results), failed)

        async def worker() -> None:
            while more():
                await send(next(order) if order else model)  # taken in issue order: the counts are exact

        async def sample_memory() -> None:
            while True:
                await asyncio.sleep(0.5)
                text = await fetch_metrics(session, settings.engine_metrics_url)
                if text:
                    peaks.observe(text)

        async def open_loop() -> None:
            """Each request at its Poisson arrival time, none waiting for another."""
            arrivals = poisson_arrivals(settings.rate_rps, settings.seed, settings.duration_s,
                                        None if by_time else settings.requests)
            sent = []
            for at in arrivals:
                await asyncio.sleep(max(0.0, started + at - time.monotonic()))
                sent.append(asyncio.create_task(send(next(order) if order else model)))
            await asyncio.gather(*sent)

        sampler = asyncio.create_task(sample_memory())
        try:
            if settings.rate_rps:
                await open_loop()
            else:
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
