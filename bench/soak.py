"""Soak: a mixed load on a real engine and sidecar for a bounded time; does anything leak or get lost?

Clients send streamed and whole completions and chats, hang up mid-stream, send bad requests, and
burst past the admission limit (429s). Every few seconds the soak samples the API process's and the
sidecar's RSS, open file descriptors and event-loop tasks (tasks also idle, before the load and after it).
At the end it reports:
- each process's RSS slope (MiB/hour, least squares after a warm-up) and its growth as a ratio of the
  RSS measured after the warm-up in the same run (the goal: under 1.10 over 10 minutes);
- request accounting: requests sent per endpoint = the engine's slo_engine_http_requests_total over all
  codes, client hang-ups = its 499s, 429s received = its 429s (every request counted exactly once);
- that no vLLM sequence is left running or waiting, and no request in flight, once the load stops.
Exits 1 if the accounting is off or anything is left running.

    .venv/bin/python bench/soak.py [--duration 600] [--json soak.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from slo_sidecar.app.processes import EngineProcess, SidecarProcess  # noqa: E402

API_KEY = "soak-key-0123456789abcdef"
MAX_NUM_SEQS, MAX_WAITING = 4, 4
ENGINE_ARGS = ("--max-model-len", "512", "--max-num-seqs", str(MAX_NUM_SEQS), "--max-waiting-requests",
               str(MAX_WAITING), "--request-timeout-s", "30", "--api-key", API_KEY)
GENERATION = ("/v1/completions", "/v1/chat/completions")
KINDS = ("stream-completion", "whole-completion", "stream-chat", "whole-chat", "hang-up", "bad-request")


@dataclass
class Sent:
    """What the clients sent and what they were told, by endpoint and code (client-side truth)."""

    by_endpoint: Counter = field(default_factory=Counter)
    codes: Counter = field(default_factory=Counter)
    hang_ups: int = 0

    def answer(self, endpoint: str, status: int) -> None:
        self.by_endpoint[endpoint] += 1
        self.codes[status] += 1


def body_for(kind: str, rng: random.Random) -> tuple[str, dict]:
    tokens = rng.randint(150, 300) if kind == "hang-up" else rng.randint(4, 48)  # a hang-up leaves a long stream
    if kind == "bad-request":
        return "/v1/completions", rng.choice([{"prompt": ""}, {"prompt": "x", "max_tokens": -1},
                                              {"prompt": "x", "temperature": "hot"}, {"messages": "hi"}])
    stream = kind.startswith("stream") or kind == "hang-up"
    if "chat" in kind:
        return "/v1/chat/completions", {"messages": [{"role": "user", "content": "soak " * rng.randint(1, 30)}],
                                        "max_tokens": tokens, "stream": stream}
    return "/v1/completions", {"prompt": "soak " * rng.randint(1, 60), "max_tokens": tokens, "stream": stream,
                               "ignore_eos": True}


async def client(session: aiohttp.ClientSession, base: str, sent: Sent, stop: asyncio.Event,
                 rng: random.Random) -> None:
    while not stop.is_set():
        kind = rng.choice(KINDS)
        endpoint, body = body_for(kind, rng)
        try:
            async with session.post(base + endpoint, json=body) as response:
                if kind == "hang-up" and response.status == 200:
                    await response.content.readline()  # the first event, then the client goes away
                    response.close()
                    sent.by_endpoint[endpoint] += 1
                    sent.hang_ups += 1
                    continue
                await response.read()
                sent.answer(endpoint, response.status)
        except aiohttp.ClientError as exc:
            raise RuntimeError(f"{kind}: the engine did not answer: {exc!r}") from None
        # A 429 says Retry-After: 1; a polite client waits a little, a greedy one not at all.
        await asyncio.sleep(rng.uniform(0, 0.5) if response.status == 429 else rng.uniform(0, 0.05))


def process_figures(pid: int) -> dict[str, float]:
    with open(f"/proc/{pid}/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024
    return {"rss_mib": rss, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[tuple[str, frozenset], float]:
    async with session.get(url) as response:
        text = await response.text()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def total(samples: dict, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(value for (sample, sample_labels), value in samples.items() if sample == name and wanted <= sample_labels)


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) points, in MiB per hour."""
    if len(points) < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    return 0.0 if spread == 0 else 3600 * sum((t - mean_t) * (v - mean_v) for t, v in points) / spread


async def soak(engine: EngineProcess, sidecar: SidecarProcess, args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    sent = Sent()
    stop = asyncio.Event()
    samples: list[dict] = []
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, headers={"Authorization": f"Bearer {API_KEY}"}) as session:
        before = await scrape(session, engine.url + "/metrics")
        sidecar_before = await scrape(session, sidecar.url + "/metrics")
        began = time.monotonic()
        # More clients than admitted sequences: they meet 429s as well as service.
        clients = [asyncio.create_task(client(session, engine.url, sent, stop, random.Random(rng.random())))
                   for _ in range(MAX_NUM_SEQS + MAX_WAITING + 4)]
        while time.monotonic() - began < args.duration:
            await asyncio.sleep(args.sample_s)
            failed = [task for task in clients if task.done()]
            if failed:
                stop.set()
                raise failed[0].exception() or RuntimeError("a client stopped")
            engine_metrics = await scrape(session, engine.url + "/metrics")
            sidecar_metrics = await scrape(session, sidecar.url + "/metrics")
            samples.append({"t": round(time.monotonic() - began, 1),
                            "engine": {**process_figures(engine.process.pid),
                                       "tasks": total(engine_metrics, "slo_engine_event_loop_tasks")},
                            "sidecar": {**process_figures(sidecar.process.pid),
                                        "tasks": total(sidecar_metrics, "sidecar_event_loop_tasks")}})
        stop.set()
        await asyncio.gather(*clients)
        await asyncio.sleep(3)  # vLLM finishes aborting the hung-up requests
        after = await scrape(session, engine.url + "/metrics")
        sidecar_after = await scrape(session, sidecar.url + "/metrics")
    # Tasks idle, before the load and once it ended: under load they count the requests in flight (vLLM's server
    # runs a few tasks for each), so a sample taken then says how busy it was, not whether tasks leak.
    idle_tasks = {"engine": [total(m, "slo_engine_event_loop_tasks") for m in (before, after)],
                  "sidecar": [total(m, "sidecar_event_loop_tasks") for m in (sidecar_before, sidecar_after)]}
    return report(sent, before, after, samples, idle_tasks, args)


def report(sent: Sent, before: dict, after: dict, samples: list[dict], idle_tasks: dict[str, list[float]],
           args: argparse.Namespace) -> dict:
    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    counted = {endpoint: delta("slo_engine_http_requests_total", endpoint=endpoint) for endpoint in GENERATION}
    accounting = {
        "sent": dict(sent.by_endpoint), "counted": counted,
        "hang_ups": sent.hang_ups, "counted_499": sum(delta("slo_engine_http_requests_total", endpoint=e, code="499")
                                                      for e in GENERATION),
        "answered_200": sent.codes[200], "counted_200": sum(delta("slo_engine_http_requests_total", endpoint=e,
                                                                  code="200") for e in GENERATION),
        "answered_429": sent.codes[429], "counted_429": sum(delta("slo_engine_http_requests_total", endpoint=e,
                                                                  code="429") for e in GENERATION),
        "codes": {str(code): n for code, n in sorted(sent.codes.items())},
    }
    left = {"vllm_running": total(after, "vllm:num_requests_running"),
            "vllm_waiting": total(after, "vllm:num_requests_waiting"),
            "in_flight": sum(total(after, "slo_engine_http_requests_in_flight", endpoint=e) for e in GENERATION)}
    warm = [s for s in samples if s["t"] >= args.duration * args.warmup]
    growth = {}
    for process in ("engine", "sidecar"):
        points = [(s["t"], s[process]["rss_mib"]) for s in warm]
        baseline = points[0][1] if points else 0.0
        growth[process] = {
            "rss_baseline_mib": round(baseline, 1), "rss_last_mib": round(points[-1][1], 1) if points else None,
            "rss_ratio": round(points[-1][1] / baseline, 3) if points and baseline else None,
            "rss_slope_mib_per_hour": round(slope_per_hour(points), 1),
            "fds_first_last": [warm[0][process]["fds"], warm[-1][process]["fds"]] if warm else None,
            "tasks_first_last": [warm[0][process]["tasks"], warm[-1][process]["tasks"]] if warm else None,
            "tasks_idle_before_after": idle_tasks[process],
        }
    # A client that hangs up is a 499, unless the server had sent its whole stream already (then a 200).
    hang_ups_whole = accounting["hang_ups"] - accounting["counted_499"]
    exact = (all(sent.by_endpoint[e] == counted[e] for e in GENERATION)
             and 0 <= hang_ups_whole and accounting["counted_200"] == accounting["answered_200"] + hang_ups_whole
             and accounting["answered_429"] == accounting["counted_429"])
    return {"duration_s": args.duration, "requests": sum(sent.by_endpoint.values()), "accounting": accounting,
            "counted_exactly_once": exact, "left_running": left, "nothing_left": not any(left.values()),
            "processes": growth, "samples": samples}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default: 600)")
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=0.2, help="share of the run before the RSS baseline")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="slo-sidecar-soak-"))
    engine = EngineProcess(workdir / "engine.log", *ENGINE_ARGS)
    with engine.start():
        engine.wait_ready()
        sidecar = SidecarProcess(workdir / "sidecar.log", engine.url, "--probe-interval-s", "5",
                                 env={"SLO_SIDECAR_ENGINE_API_KEY": API_KEY})
        with sidecar.start():
            sidecar.wait_ready()
            result = asyncio.run(soak(engine, sidecar, args))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    shown = {key: value for key, value in result.items() if key != "samples"}
    print(json.dumps(shown, indent=2))
    return 0 if result["counted_exactly_once"] and result["nothing_left"] else 1


if __name__ == "__main__":
    sys.exit(main())
