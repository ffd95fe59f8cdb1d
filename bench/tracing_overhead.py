"""What tracing costs the engine: the same load with tracing off and on, in one run.

"on" samples every request (OTEL_TRACES_SAMPLER=always_on) and exports over
OTLP/HTTP to a receiver in this process that accepts and discards the spans;
"off" runs with OTEL_SDK_DISABLED=true. Blocks alternate (off, on, off, on, ...),
one engine at a time, each started fresh. Prints throughput and TTFT p50/p99 of
both and their ratio. Goal: tracing costs under 1% of throughput.

    .venv/bin/python bench/tracing_overhead.py [--blocks 3 --rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.engine_throughput import (  # noqa: E402
    MAX_MODEL_LEN,
    MAX_NUM_SEQS,
    RoundResult,
    add_load_arguments,
    run_alternating,
    measure_http,
    summarize,
)
from slo_sidecar.processes import EngineProcess  # noqa: E402
from tests.otlp_receiver import OtlpReceiver  # noqa: E402


def run_block(tracing: bool, receiver: OtlpReceiver, workdir: Path, args: argparse.Namespace) -> list[RoundResult]:
    if tracing:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_TRACES_SAMPLER": "always_on"}
    else:
        env = {"OTEL_SDK_DISABLED": "true"}
    engine = EngineProcess(workdir / f"engine-{'on' if tracing else 'off'}.log", "--max-model-len",
                           str(MAX_MODEL_LEN), "--max-num-seqs", str(MAX_NUM_SEQS), "--trace-exporter", "otlp",
                           env=env)
    with engine.start():
        engine.wait_ready()
        return asyncio.run(measure_http(engine.url, args))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_arguments(parser)
    parser.add_argument("--blocks", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    receiver = OtlpReceiver(decode=False).start()
    print(f"load: {args.requests} streamed completions x {args.max_tokens} tokens, concurrency {args.concurrency}; "
          f"{args.blocks} blocks x {args.rounds} rounds each")
    try:
        rounds = run_alternating(("off", "on"), lambda name: run_block(name == "on", receiver, workdir, args), args)
    finally:
        receiver.stop()
    results = {name: summarize(f"tracing {name}", rounds[name]) for name in rounds}
    ratio = results["on"]["tokens_per_s"] / results["off"]["tokens_per_s"]
    print(f"\nexport requests received: {receiver.requests}")
    print(f"tracing on / off throughput: {ratio:.3f}   (goal >= 0.99)")
    print(f"tracing on / off TTFT p50:   {results['on']['ttft_p50_ms'] / results['off']['ttft_p50_ms']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
