"""Throughput and TTFT of the engine's HTTP server against two baselines, in one run.

The same fixed load (streamed completions, ignore_eos, fixed prompt and output
lengths, fixed concurrency) goes to:

  server   `slo-sidecar engine` over HTTP (what users run)
  direct   vLLM's AsyncLLM called in-process by the load generator, no HTTP (the ceiling)
  vllm     vLLM's own OpenAI server over HTTP (what users would run otherwise)

and the script prints output tokens/s and TTFT p50/p99 for each, then the ratios:
server/direct is the server's overhead (goal >= 0.95), server/vllm must keep up
(throughput >= 0.95, median TTFT within 10%).

Each configuration runs alone on the machine (two vLLM engines up at once stall
each other on 2 cores), in alternating blocks (server, vllm, direct, server, ...)
so that drift hits all three alike: each block starts its process, warms up,
runs --rounds measured rounds and stops it. The median round is reported.

    .venv/bin/python bench/engine_throughput.py [--requests 64 --concurrency 8 --max-tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from slo_sidecar.processes import EngineProcess, ManagedProcess, free_port  # noqa: E402

MAX_MODEL_LEN = 1024
MAX_NUM_SEQS = 16


@dataclass
class RoundResult:
    output_tokens: int
    elapsed_s: float
    ttfts_s: list[float]

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.elapsed_s


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def run_load(one_request, requests: int, concurrency: int) -> RoundResult:
    """Run `requests` calls of one_request() with at most `concurrency` at once."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    ttfts, tokens = [], [0]

    async def worker() -> None:
        while not queue.empty():
            queue.get_nowait()
            ttft, count = await one_request()
            ttfts.append(ttft)
            tokens[0] += count

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return RoundResult(tokens[0], time.perf_counter() - started, ttfts)


def http_requester(session, url: str, prompt: str, max_tokens: int):
    import aiohttp  # noqa: F401

    body = {"model": "tiny-llama", "prompt": prompt, "max_tokens": max_tokens, "stream": True,
            "ignore_eos": True, "temperature": 1.0, "stream_options": {"include_usage": True}}

    async def one_request() -> tuple[float, int]:
        started = time.perf_counter()
        ttft, usage, buffer = None, None, b""
        async with session.post(url + "/v1/completions", json=body) as response:
            assert response.status == 200, await response.text()
            async for chunk in response.content.iter_any():
                if ttft is None:
                    ttft = time.perf_counter() - started
                buffer += chunk
        for block in buffer.split(b"\n\n"):
            if block.startswith(b"data: {") and b'"usage":{' in block:
                usage = json.loads(block[6:])["usage"]
        return ttft, usage["completion_tokens"]

    return one_request


async def direct_requester(model_dir: str, args: argparse.Namespace):
    """(one_request, shutdown) for AsyncLLM in this process: the no-HTTP ceiling."""
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.inputs.engine import tokens_input
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    engine = await asyncio.to_thread(AsyncLLM.from_engine_args, AsyncEngineArgs(
        model=model_dir, served_model_name=["tiny-llama"], max_model_len=MAX_MODEL_LEN, max_num_seqs=MAX_NUM_SEQS,
        dtype="auto", enforce_eager=True, disable_log_stats=False))
    token_ids = engine.get_tokenizer().encode(args.prompt)
    params = SamplingParams(max_tokens=args.max_tokens, ignore_eos=True, temperature=1.0,
                            output_kind=RequestOutputKind.DELTA)

    async def one_request() -> tuple[float, int]:
        started, ttft, count = time.perf_counter(), None, 0
        async for output in engine.generate(tokens_input(token_ids), params, uuid.uuid4().hex):
            if ttft is None:
                ttft = time.perf_counter() - started
            count += sum(len(o.token_ids) for o in output.outputs)
        return ttft, count

    return one_request, engine


def vllm_openai_server(model_dir: str, log_path: Path) -> tuple[ManagedProcess, str]:
    """vLLM's own server, configured like ours: same limits, no access log. (process, base url)"""
    port = free_port()
    args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
            "--served-model-name", "tiny-llama", "--host", "127.0.0.1", "--port", str(port),
            "--max-model-len", str(MAX_MODEL_LEN), "--max-num-seqs", str(MAX_NUM_SEQS),
            "--enforce-eager", "--disable-uvicorn-access-log"]
    return ManagedProcess("vllm-openai", args, log_path), f"http://127.0.0.1:{port}"


def summarize(name: str, rounds: list[RoundResult]) -> dict[str, float]:
    median_round = sorted(rounds, key=lambda r: r.tokens_per_s)[len(rounds) // 2]
    ttfts = [t for r in rounds for t in r.ttfts_s]
    row = {"tokens_per_s": median_round.tokens_per_s, "ttft_p50_ms": 1000 * percentile(ttfts, 0.5),
           "ttft_p99_ms": 1000 * percentile(ttfts, 0.99)}
    print(f"{name:<8} {row['tokens_per_s']:>10.0f} tok/s   TTFT p50 {row['ttft_p50_ms']:>7.1f} ms   "
          f"p99 {row['ttft_p99_ms']:>7.1f} ms   (rounds: {', '.join(f'{r.tokens_per_s:.0f}' for r in rounds)})")
    return row


async def measure(one_request_factory, args: argparse.Namespace) -> list[RoundResult]:
    """Warm up, then args.rounds measured rounds of the fixed load."""
    one_request = await one_request_factory()
    await run_load(one_request, 2 * args.concurrency, args.concurrency)
    return [await run_load(one_request, args.requests, args.concurrency) for _ in range(args.rounds)]


async def measure_http(url: str, args: argparse.Namespace) -> list[RoundResult]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        async def factory():
            return http_requester(session, url, args.prompt, args.max_tokens)

        return await measure(factory, args)


async def measure_direct(model_dir: str, args: argparse.Namespace) -> list[RoundResult]:
    engine = None

    async def factory():
        nonlocal engine
        one_request, engine = await direct_requester(model_dir, args)
        return one_request

    try:
        return await measure(factory, args)
    finally:
        if engine is not None:
            engine.shutdown(timeout=5)


def run_block(name: str, model_dir: str, workdir: Path, args: argparse.Namespace) -> list[RoundResult]:
    """One configuration, alone on the machine: start it, measure, stop it."""
    if name == "direct":
        # In a child process of its own, like the servers: no engine ever shares the machine.
        out = workdir / "direct-rounds.json"
        command = [sys.executable, __file__, "--direct-worker", str(out), "--requests", str(args.requests),
                   "--concurrency", str(args.concurrency), "--max-tokens", str(args.max_tokens),
                   "--prompt", args.prompt, "--rounds", str(args.rounds)]
        with open(workdir / "direct.log", "wb") as log:
            subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
        return [RoundResult(**r) for r in json.loads(out.read_text())]
    if name == "server":
        server = EngineProcess(workdir / "server.log", "--max-model-len", str(MAX_MODEL_LEN),
                               "--max-num-seqs", str(MAX_NUM_SEQS), "--kv-cache-gib", "1")
        process, url, ready_path = server, server.url, "/ready"
    else:
        (process, url), ready_path = vllm_openai_server(model_dir, workdir / "vllm-openai.log"), "/health"
    with process.start():
        process.wait_http_ok(url + ready_path)
        return asyncio.run(measure_http(url, args))


def run_alternating(names: tuple[str, ...], run_block: Callable[[str], list[RoundResult]],
                    args: argparse.Namespace) -> dict[str, list[RoundResult]]:
    """args.blocks blocks, each running every configuration once, in turn, so drift hits all alike."""
    rounds: dict[str, list[RoundResult]] = {name: [] for name in names}
    for block in range(args.blocks):
        for name in names:
            rounds[name].extend(run_block(name))
            print(f"  block {block + 1}/{args.blocks} {name}: "
                  + ", ".join(f"{r.tokens_per_s:.0f}" for r in rounds[name][-args.rounds:]) + " tok/s", flush=True)
    return rounds


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """The fixed load, shared by the engine benches so that their figures compare."""
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--prompt", default="Measure the time to first token and the tokens per second " * 2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/slo-sidecar-bench")
    parser.add_argument("--json", help="also write the results here")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_arguments(parser)
    parser.add_argument("--blocks", type=int, default=2, help="times each configuration is started and measured")
    parser.add_argument("--direct-worker", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    from engine.tiny_model import ensure_default_model

    model_dir = str(ensure_default_model())
    if args.direct_worker:
        rounds = asyncio.run(measure_direct(model_dir, args))
        Path(args.direct_worker).write_text(json.dumps([vars(r) for r in rounds]))
        return 0
    print(f"load: {args.requests} streamed completions x {args.max_tokens} tokens, concurrency {args.concurrency}, "
          f"{args.rounds} rounds each; max_num_seqs {MAX_NUM_SEQS}")
    rounds = run_alternating(("server", "vllm", "direct"),
                             lambda name: run_block(name, model_dir, workdir, args), args)
    results = {name: summarize(name, rounds[name]) for name in rounds}

    server, direct, vllm = results["server"], results["direct"], results["vllm"]
    ratios = {
        "server_vs_direct_throughput": server["tokens_per_s"] / direct["tokens_per_s"],
        "server_vs_vllm_throughput": server["tokens_per_s"] / vllm["tokens_per_s"],
        "server_vs_vllm_ttft_p50": server["ttft_p50_ms"] / vllm["ttft_p50_ms"],
    }
    print(f"\nserver / direct throughput: {ratios['server_vs_direct_throughput']:.3f}   (goal >= 0.95)")
    print(f"server / vllm   throughput: {ratios['server_vs_vllm_throughput']:.3f}   (goal >= 0.95)")
    print(f"server / vllm   TTFT p50:   {ratios['server_vs_vllm_ttft_p50']:.3f}   (goal <= 1.10)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
