"""What the sidecar costs next to the engine: one collect cycle, CPU at a 1 s interval, scrapes, memory.

1. A full engine collect cycle (parse the wanted families, derive rates and
   quantiles, build the families served) on the captured real vLLM exposition
   and on synthetic ones of ~1k and ~10k series, next to prometheus_client's
   parser alone on the same text, in the same run. Goal: >= 40x faster.
2. The real sidecar process scraping a server of that exposition every 1 s,
   with one fake GPU: its CPU share over 30 s. Goal: < 0.5% of one core.
3. /metrics latency with 20 concurrent scrapers, next to one scraper. Goal: p99 < 5 ms
   (rendered once per poll, the bytes served to every scraper).
4. RSS of a process after 1,000 and after 10,000 cycles (time moving on, values
   changing). Goal: flat.

    .venv/bin/python bench/sidecar_cycle.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from slo_sidecar.sidecar.config import SidecarConfig  # noqa: E402
from slo_sidecar.sidecar.engine_poller import EnginePoller  # noqa: E402
from slo_sidecar.app.processes import SidecarProcess  # noqa: E402
from tests.fake_exposition_server import ExpositionServer  # noqa: E402
from tests.helpers import VLLM_EXPOSITION as FIXTURE  # noqa: E402  (a real vLLM /metrics capture)


def synthetic(text: str, series: int) -> str:
    """The real exposition with its vLLM series repeated for more engines (engine="1", "2", ...)."""
    lines = text.splitlines()
    vllm = [line for line in lines if line.startswith("vllm:") and 'engine="0"' in line]
    out, copies = list(lines), 1
    while len([line for line in out if not line.startswith("#")]) < series:
        out += [line.replace('engine="0"', f'engine="{copies}"') for line in vllm]
        copies += 1
    # Group each family's samples together again, as an exposition must.
    by_family: dict[str, list[str]] = {}
    for line in out:
        name = line.split(" ")[2] if line.startswith("# ") else re.split(r"[{ ]", line, 1)[0]
        family = re.sub(r"(_total|_bucket|_sum|_count|_created)$", "", name)
        bucket = by_family.setdefault(family, [])
        if not (line.startswith("# ") and line in bucket):
            bucket.append(line)
    return "\n".join(line for lines in by_family.values() for line in lines) + "\n"


def series_count(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def per_call_s(call, min_time_s: float) -> float:
    """Median seconds per call over batches filling min_time_s."""
    call()
    runs, started = [], time.perf_counter()
    while time.perf_counter() - started < min_time_s or len(runs) < 5:
        t0 = time.perf_counter()
        call()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def bench_cycle(text: str, min_time_s: float) -> tuple[float, float, float]:
    """(our cycle, prometheus_client's parser, the parser again): seconds per call, median. The two parser
    runs give the run's A/A noise."""
    engine = EnginePoller(SidecarConfig(), monotonic=itertools.count(1).__next__)  # a scrape a second

    def cycle() -> None:
        engine.take(text)

    def baseline() -> None:
        for _ in text_string_to_metric_families(text):
            pass

    return per_call_s(baseline, min_time_s), per_call_s(cycle, min_time_s), per_call_s(baseline, min_time_s)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def bench_rss(text: str, cycles: int) -> list[tuple[int, int]]:
    """RSS after 1,000 cycles and after `cycles`; counter values move on every cycle."""
    engine = EnginePoller(SidecarConfig(), monotonic=itertools.count(1).__next__)  # a scrape a second
    lines = text.splitlines()
    counters = [i for i, line in enumerate(lines) if line.startswith("vllm:") and
                ("_total" in line.split(" ")[0] or "_bucket" in line or "_count" in line or "_sum" in line)]
    points = []
    for cycle in range(1, cycles + 1):
        if cycle % 10 == 0:  # new values now and then: parse and derive see changing text
            for i in counters[:20]:
                name, value = lines[i].rsplit(" ", 1)
                lines[i] = f"{name} {float(value) + 1}"
            text = "\n".join(lines) + "\n"
        engine.take(text)
        if cycle in (1_000, cycles):
            gc.collect()
            points.append((cycle, rss_bytes()))
    return points


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def scrape_latencies(url: str, scrapers: int, duration_s: float) -> list[float]:
    import aiohttp

    latencies: list[float] = []
    async with aiohttp.ClientSession() as session:
        async def scraper() -> None:
            deadline = time.monotonic() + duration_s
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                async with session.get(url) as response:
                    await response.read()
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(scraper() for _ in range(scrapers)))
    return latencies


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_process(text: str, workdir: Path, cpu_window_s: float) -> dict:
    server = ExpositionServer(text).start()
    try:
        with SidecarProcess(workdir / "sidecar.log", server.url, "--engine-interval-s", "1", "--fake-gpu", "1",
                            "--gpu-scope", "all", "--gpu-interval-s", "1").start() as sidecar:
            sidecar.wait_ready()
            time.sleep(3)  # past start-up
            pid = sidecar.process.pid
            cpu0, wall0 = cpu_seconds(pid), time.monotonic()
            time.sleep(cpu_window_s)
            cpu_share = (cpu_seconds(pid) - cpu0) / (time.monotonic() - wall0)
            one = asyncio.run(scrape_latencies(sidecar.url + "/metrics", 1, 5))
            twenty = asyncio.run(scrape_latencies(sidecar.url + "/metrics", 20, 5))
            sidecar.stop()
    finally:
        server.stop()
    return {"cpu_share": cpu_share, "one": one, "twenty": twenty}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (a smoke test, not figures)")
    parser.add_argument("--workdir", default="/tmp/slo-sidecar-bench")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    real = FIXTURE.read_text()
    min_time = 0.3 if args.quick else 3.0

    print("1. one full engine collect cycle vs prometheus_client's parser alone (median per call)")
    for label, text in (("vLLM fixture", real), ("synthetic 1k", synthetic(real, 1_000)),
                        ("synthetic 10k", synthetic(real, 10_000))):
        baseline_s, cycle_s, again_s = bench_cycle(text, min_time)
        print(f"   {label:14} {series_count(text):6} series {len(text) / 1024:7.0f} KiB: cycle {cycle_s * 1e3:7.3f} ms, "
              f"parser {baseline_s * 1e3:8.3f} ms -> {baseline_s / cycle_s:5.1f}x (goal >= 40x); "
              f"A/A {abs(again_s / baseline_s - 1):.1%}")

    print("2./3. the sidecar process at a 1 s interval (engine exposition + 1 fake GPU)")
    process = bench_process(real, workdir, 8 if args.quick else 30)
    print(f"   CPU: {process['cpu_share'] * 100:.3f}% of one core (goal < 0.5%)")
    one, twenty = process["one"], process["twenty"]
    print(f"   /metrics, 1 scraper:   p50 {quantile(one, .5) * 1e3:.2f} ms, p99 {quantile(one, .99) * 1e3:.2f} ms, "
          f"{len(one) / 5:.0f} scrapes/s")
    print(f"   /metrics, 20 scrapers: p50 {quantile(twenty, .5) * 1e3:.2f} ms, p99 {quantile(twenty, .99) * 1e3:.2f} ms, "
          f"{len(twenty) / 5:.0f} scrapes/s (goal p99 < 5 ms); p99 is {quantile(twenty, .99) / quantile(one, .5):.1f}x one "
          "scraper's p50")

    cycles = 2_000 if args.quick else 10_000
    print(f"4. RSS over {cycles} cycles on the vLLM fixture")
    points = bench_rss(real, cycles)
    (first_cycle, first_rss), (last_cycle, last_rss) = points
    print(f"   after {first_cycle}: {first_rss / 2**20:.1f} MiB; after {last_cycle}: {last_rss / 2**20:.1f} MiB "
          f"-> {last_rss / first_rss:.3f}x (goal: flat)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
