"""What serving LoRA adapters costs: the same load on the base model alone (no --enable-lora) and on two
adapters (--enable-lora, requests split between them), each on a fresh engine, in one run. Prints
generated tokens per second of each and their ratio.

    .venv/bin/python bench/lora_throughput.py [--requests 96 --concurrency 8 --max-tokens 64 --rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402

from slo_sidecar.engine.tiny_lora import ensure_lora  # noqa: E402
from slo_sidecar.app.processes import EngineProcess  # noqa: E402

ADAPTERS = ("medical", "legal")


async def load(url: str, models: tuple[str, ...], args: argparse.Namespace) -> float:
    """Generated tokens per second for args.requests whole completions, args.concurrency at a time."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(args.requests):
        queue.put_nowait(index)
    tokens = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal tokens
        while not queue.empty():
            index = queue.get_nowait()
            body = {"model": models[index % len(models)], "prompt": "measure the adapters " * 4,
                    "max_tokens": args.max_tokens, "ignore_eos": True}
            async with session.post(url + "/v1/completions", json=body) as response:
                assert response.status == 200, await response.text()
                tokens += (await response.json())["usage"]["completion_tokens"]

    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        await asyncio.gather(*(worker(session) for _ in range(args.concurrency)))
        return tokens / (time.monotonic() - started)


def measure(workdir: Path, name: str, extra: list[str], models: tuple[str, ...], args: argparse.Namespace) -> list[float]:
    engine = EngineProcess(workdir / f"{name}.log", "--max-model-len", "512", "--max-num-seqs", "8", *extra)
    with engine.start():
        engine.wait_ready()
        asyncio.run(load(engine.url, models, argparse.Namespace(**{**vars(args), "requests": 16})))  # warm-up
        return [asyncio.run(load(engine.url, models, args)) for _ in range(args.rounds)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="slo-sidecar-lora-bench-"))
    modules = [f"{name}={ensure_lora(name)}" for name in ADAPTERS]
    base = measure(workdir, "base", [], ("tiny-llama",), args)
    adapters = measure(workdir, "adapters", ["--enable-lora", "--max-loras", "2", "--max-lora-rank", "8",
                                             "--lora-modules", *modules], ADAPTERS, args)
    best_base, best_adapters = max(base), max(adapters)
    print(f"base model alone: {', '.join(f'{v:.0f}' for v in base)} tokens/s (best {best_base:.0f})")
    print(f"two adapters:     {', '.join(f'{v:.0f}' for v in adapters)} tokens/s (best {best_adapters:.0f})")
    print(f"ratio adapters / base: {best_adapters / best_base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
