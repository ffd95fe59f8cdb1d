"""What the golden probes cost the engine: its busy time per probe, as a share of its time at the default interval.

A real engine (the embedded model), idle but for this bench. Requests go one at a time, so each one's latency is
the engine's time for it alone:
1. golden probes (one item each, teacher-forced: prompt and continuation prefilled, one token generated), in
   turn over the set, twice (the second run is the A/A noise);
2. requests of the load-test gate's default shape (64 prompt words, 32 tokens), for scale.
The probes' share of the engine's time is a probe's busy time over the probe interval
(`correctness.interval_s`, one probe per interval). Goal: < 1%.

    .venv/bin/python bench/golden_cost.py [--probes 40]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from slo_sidecar.app.processes import EngineProcess  # noqa: E402
from slo_sidecar.iokit.golden_client import GoldenClient  # noqa: E402
from slo_sidecar.spec.golden import load_golden_set  # noqa: E402
from slo_sidecar.spec.model import Correctness  # noqa: E402


async def probe_latencies(url: str, count: int) -> list[float]:
    golden = load_golden_set()
    async with aiohttp.ClientSession() as session:
        client = GoldenClient(session, url, golden)
        await client.score(0)  # tokenized once, as the sidecar does
        latencies = []
        for index in range(count):
            started = time.perf_counter()
            await client.score(index % len(golden.items))
            latencies.append(time.perf_counter() - started)
        return latencies


async def request_latencies(url: str, count: int) -> list[float]:
    body = {"prompt": " ".join(["word"] * 64), "max_tokens": 32, "ignore_eos": True}
    async with aiohttp.ClientSession() as session:
        latencies = []
        for _ in range(count):
            started = time.perf_counter()
            async with session.post(url + "/v1/completions", json=body) as response:
                await response.read()
            latencies.append(time.perf_counter() - started)
        return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=40)
    args = parser.parse_args()
    interval_s = Correctness().interval_s
    with tempfile.TemporaryDirectory() as workdir:
        engine = EngineProcess(Path(workdir) / "engine.log").start()
        try:
            engine.wait_ready()
            first = asyncio.run(probe_latencies(engine.url, args.probes))
            typical = asyncio.run(request_latencies(engine.url, args.probes // 2))
            second = asyncio.run(probe_latencies(engine.url, args.probes))
        finally:
            engine.stop()
            engine.kill_group()
    probe_s, again_s = statistics.median(first), statistics.median(second)
    request_s = statistics.median(typical)
    share = max(probe_s, again_s) / interval_s
    print(f"golden probe: median {probe_s * 1e3:.1f} ms of the engine's time (A/A: {again_s * 1e3:.1f} ms, "
          f"{abs(again_s - probe_s) / probe_s:.1%}); a gate-shaped request (64 words, 32 tokens): "
          f"{request_s * 1e3:.1f} ms")
    print(f"at one probe per {interval_s:g} s (correctness.interval_s): {share:.2%} of the engine's time "
          f"(goal < 1%); a probe costs {probe_s / request_s:.2f} of a gate-shaped request")
    return 0 if share < 0.01 else 1


if __name__ == "__main__":
    sys.exit(main())
