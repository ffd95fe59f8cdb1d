"""What our instrumentation costs vLLM's own OpenAI server, measured by vLLM's own benchmark client.

Two configurations of `python -m vllm.entrypoints.openai.api_server` on the embedded model, `ours` and a
baseline (--baseline):

  plain     no plugin of ours (VLLM_PLUGINS=none), no middleware: what a user runs today
  untraced  ours with tracing off: what tracing itself costs
  ours      `--middleware slo_sidecar.engine.asgi.SloMiddleware` and the stat-logger plugin, tracing on (every
            request sampled, spans exported over OTLP/HTTP to a receiver in this process)

Blocks run in ABBA order (plain, ours, ours, plain, ...), one server at a time, each started fresh;
in each block vLLM's `bench serve` (random dataset, fixed input and output lengths, fixed
concurrency) measures output throughput and median TTFT. Prints each block, the medians of each
configuration, their ratios, and the A/A noise (the spread between blocks of the same configuration).
Goals (issue 24): ours >= 0.98 of plain's throughput, median TTFT <= 1.05x; ours >= 0.99 of untraced's
throughput, with enough cycles that the A/A noise resolves 1%.

    .venv/bin/python bench/plugin_overhead.py [--baseline plain|untraced] [--cycles 2 --prompts 300]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from slo_sidecar.app.processes import VllmServerProcess  # noqa: E402
from tests.otlp_receiver import OtlpReceiver  # noqa: E402

MODEL_NAME = "tiny-llama"
CLIENT = ("from vllm.benchmarks.serve import add_cli_args, main\n"
          "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
          "import sys\n"
          "parser = FlexibleArgumentParser()\nadd_cli_args(parser)\nmain(parser.parse_args(sys.argv[1:]))\n")


def server_env(name: str, receiver: OtlpReceiver) -> tuple[list[str], dict[str, str]]:
    env = {"VLLM_CPU_KVCACHE_SPACE": "1"}
    if name == "plain":
        return [], {**env, "VLLM_PLUGINS": "none"}
    if name == "untraced":
        return ["--middleware", "slo_sidecar.engine.asgi.SloMiddleware"], {**env, "SLO_ENGINE_TRACE_EXPORTER": "none"}
    return (["--middleware", "slo_sidecar.engine.asgi.SloMiddleware"],
            {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_TRACES_SAMPLER": "always_on",
             "OTEL_BSP_SCHEDULE_DELAY": "500"})


def run_block(name: str, model_dir: str, workdir: Path, receiver: OtlpReceiver, args: argparse.Namespace,
              index: int) -> dict[str, float]:
    extra, env = server_env(name, receiver)
    server = VllmServerProcess(workdir / f"{index:02d}-{name}.log", model_dir, "--served-model-name", MODEL_NAME,
                               "--max-model-len", "1024", "--max-num-seqs", str(args.concurrency),
                               "--enforce-eager", "--disable-uvicorn-access-log", *extra, env=env)
    result_file = workdir / f"{index:02d}-{name}.json"
    with server.start():
        server.wait_ready()
        command = [sys.executable, "-c", CLIENT, "--backend", "vllm", "--base-url", server.url,
                   "--endpoint", "/v1/completions", "--model", MODEL_NAME, "--tokenizer", model_dir,
                   "--dataset-name", "random", "--random-input-len", str(args.input_len),
                   "--random-output-len", str(args.output_len), "--num-prompts", str(args.prompts),
                   "--max-concurrency", str(args.concurrency), "--ignore-eos", "--seed", str(args.seed),
                   "--save-result", "--result-dir", str(workdir), "--result-filename", result_file.name,
                   "--disable-tqdm", "--num-warmups", str(args.concurrency)]
        with open(workdir / f"{index:02d}-{name}-client.log", "wb") as log:
            subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, timeout=1800)
    result = json.loads(result_file.read_text())
    return {"tokens_per_s": result["output_throughput"], "ttft_p50_ms": result["median_ttft_ms"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", choices=("plain", "untraced"), default="plain")
    parser.add_argument("--cycles", type=int, default=2, help="ABBA cycles (4 blocks each)")
    parser.add_argument("--prompts", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", default="/tmp/slo-sidecar-plugin-bench")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    from slo_sidecar.engine.tiny_model import ensure_default_model

    model_dir = str(ensure_default_model())
    base = args.baseline
    order = [name for _ in range(args.cycles) for name in (base, "ours", "ours", base)]
    blocks: dict[str, list[dict[str, float]]] = {base: [], "ours": []}
    receiver = OtlpReceiver().start()
    try:
        for index, name in enumerate(order):
            row = run_block(name, model_dir, workdir, receiver, args, index)
            blocks[name].append(row)
            print(f"block {index + 1}/{len(order)} {name:<8} {row['tokens_per_s']:8.0f} tok/s   "
                  f"TTFT p50 {row['ttft_p50_ms']:7.1f} ms", flush=True)
    finally:
        receiver.stop()
    medians = {name: {key: statistics.median(row[key] for row in rows) for key in rows[0]}
               for name, rows in blocks.items()}
    ratios = {"throughput": medians["ours"]["tokens_per_s"] / medians[base]["tokens_per_s"],
              "ttft_p50": medians["ours"]["ttft_p50_ms"] / medians[base]["ttft_p50_ms"]}
    noise = {key: max(max(row[key] for row in rows) / min(row[key] for row in rows) - 1 for rows in blocks.values())
             for key in ("tokens_per_s", "ttft_p50_ms")}
    goals = {"plain": (">= 0.98", "<= 1.05"), "untraced": (">= 0.99", "-")}[base]
    print(f"\nmedians: {base} {medians[base]}, ours {medians['ours']}")
    print(f"ours / {base} throughput: {ratios['throughput']:.3f}   (goal {goals[0]})")
    print(f"ours / {base} TTFT p50:   {ratios['ttft_p50']:.3f}   (goal {goals[1]})")
    print(f"A/A noise (largest spread between blocks of one configuration): throughput "
          f"{noise['tokens_per_s']:.1%}, TTFT p50 {noise['ttft_p50_ms']:.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "blocks": blocks, "medians": medians,
                                               "ratios": ratios, "noise": noise}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
