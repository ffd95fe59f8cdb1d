"""Series per pod as the tenants grow: a real engine with 0, 2 and 10 LoRA adapters and a real sidecar
beside it, its spec sliced per tenant (every tenant named). Counts the samples each /metrics serves,
by family group, after one request per tenant.

    .venv/bin/python bench/tenant_series.py [--adapters 0 2 10] [--gpus 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import urllib.request
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from slo_sidecar.engine.tiny_lora import ensure_lora  # noqa: E402
from slo_sidecar.app.processes import EngineProcess, SidecarProcess  # noqa: E402
from slo_sidecar.spec.load import DEFAULT_SPEC  # noqa: E402
from slo_sidecar.spec.slicing import sliced_document  # noqa: E402


def families(url: str) -> Counter:
    """Samples by group: vllm:*, slo_engine_*, slo_* (the sidecar's SLO families), sidecar_*, other."""
    text = urllib.request.urlopen(url, timeout=30).read().decode()
    groups: Counter = Counter()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{")[0].split(" ")[0]
        group = next((prefix for prefix in ("vllm:", "slo_engine_", "slo_", "sidecar_") if name.startswith(prefix)),
                     "other")
        groups[group] += 1
    return groups


def measure(workdir: Path, adapters: int, gpus: int = 8) -> tuple[Counter, Counter]:
    names = tuple(f"tenant-{i}" for i in range(adapters))
    spec = workdir / f"spec-{adapters}.yaml"
    document = yaml.safe_load(DEFAULT_SPEC.read_text())
    spec.write_text(yaml.safe_dump(sliced_document(document, ("tiny-llama", *names)) if adapters else document,
                                   sort_keys=False))
    lora = ["--enable-lora", "--max-loras", str(max(1, min(adapters, 4))), "--max-lora-rank", "8",
            "--lora-modules", *(f"{name}={ensure_lora(name)}" for name in names)] if adapters else []
    engine = EngineProcess(workdir / f"engine-{adapters}.log", "--max-model-len", "512", "--slo", str(spec), *lora)
    with engine.start():
        engine.wait_ready()
        for model in ("tiny-llama", *names):
            request = urllib.request.Request(engine.url + "/v1/completions", method="POST",
                                             data=json.dumps({"model": model, "prompt": "x", "max_tokens": 2}).encode(),
                                             headers={"Content-Type": "application/json"})
            urllib.request.urlopen(request, timeout=60).read()
        sidecar = SidecarProcess(workdir / f"sidecar-{adapters}.log", engine.url, "--slo", str(spec),
                                 "--engine-interval-s", "1", "--fake-gpu", str(gpus), "--gpu-hourly-usd", "2")
        with sidecar.start():
            sidecar.wait_ready()
            import time

            time.sleep(5)  # a few scrapes: rates and the tenants' cost exist
            return families(engine.url + "/metrics"), families(sidecar.url + "/metrics")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapters", type=int, nargs="+", default=[0, 2, 10])
    parser.add_argument("--gpus", type=int, default=8, help="fake GPUs beside the sidecar (default 8)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="slo-sidecar-series-bench-"))
    print(f"{'adapters':>8} {'vllm:*':>7} {'slo_engine_*':>12} {'engine other':>12} {'sidecar slo_*':>13} "
          f"{'sidecar_*':>9} {'sidecar other':>13} {'pod total':>9}")
    for adapters in args.adapters:
        engine, sidecar = measure(workdir, adapters, args.gpus)
        total = sum(engine.values()) + sum(sidecar.values())
        print(f"{adapters:>8} {engine['vllm:']:>7} {engine['slo_engine_']:>12} {engine['other']:>12} "
              f"{sidecar['slo_']:>13} {sidecar['sidecar_']:>9} {sidecar['other']:>13} {total:>9}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
