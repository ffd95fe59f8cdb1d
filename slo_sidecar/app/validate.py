"""`slo-sidecar validate`: check an SLO spec, and with --url, gate a deployment on it under load.

The gate is the reference design's "validate the model for production", with
its acceptance criteria taken from the SLO spec instead of typed again: drive
a load, print a PASS/FAIL table, write a JSON report, exit 1 on FAIL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path

from slo_sidecar.iokit.arguments import http_url, positive
from slo_sidecar.iokit.files import write_atomically
from slo_sidecar.spec.model import Spec

EXIT_FAIL, EXIT_ERROR = 1, 2


def describe_spec(spec: Spec) -> None:
    for slo in spec.slos:
        where = "" if slo.sli.sidecar_can_evaluate else " (PromQL SLI: Prometheus rules only, no live burn rates)"
        print(f"{slo.name}: {slo.objective:g}% over {slo.period}, {slo.sli.kind}{where}")
    print(f"{spec.source}: valid, {len(spec.slos)} SLOs")


def tenant(text: str) -> tuple[str, float]:
    """`--model NAME` or `NAME=WEIGHT`: a served model's name and its share of the load (default 1)."""
    name, sep, weight_text = text.rpartition("=") if "=" in text else (text, "", "")
    if not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME or NAME=WEIGHT, got {text!r}")
    if not sep:
        return name, 1.0
    try:
        weight = float(weight_text)
    except ValueError:
        weight = math.nan
    if not 0 < weight < math.inf:
        raise argparse.ArgumentTypeError(f"the weight of {name!r} must be a finite number > 0, got {weight_text!r}")
    return name, weight


tenant.__name__ = "NAME[=WEIGHT]"


class _Tenants(argparse.Action):
    """Collects --model values in order; a name given twice is an error (which weight was meant?)."""

    def __call__(self, parser, namespace, value, option_string=None):
        tenants = list(getattr(namespace, self.dest) or ())
        if any(name == value[0] for name, _ in tenants):
            raise argparse.ArgumentError(self, f"{value[0]!r} is named twice; give each model once, with its weight")
        setattr(namespace, self.dest, tenants + [value])


def api_key(args: argparse.Namespace) -> str | None:
    """The engine's bearer token: --api-key, else $SLO_ENGINE_API_KEY (the load test's and the golden check's)."""
    return args.api_key or os.environ.get("SLO_ENGINE_API_KEY")


def settings_from(args: argparse.Namespace, url: str | None = None):
    from .loadgen import LoadSettings, read_request_file

    return LoadSettings(url=(url or args.url).rstrip("/"), concurrency=args.concurrency, requests=args.requests,
                        duration_s=args.duration, prompt_tokens=args.prompt_tokens, max_tokens=args.max_tokens,
                        stream=args.stream, endpoint=args.endpoint, tenants=tuple(args.model or ()),
                        api_key=api_key(args), metrics_url=args.metrics_url,
                        rate_rps=args.rate, seed=args.seed,
                        request_mix=read_request_file(args.requests_file) if args.requests_file else ())


def run_gate(args: argparse.Namespace, spec: Spec) -> int:
    from .loadgen import RequestFileError

    try:
        settings = settings_from(args)
    except RequestFileError as error:
        print(f"slo-sidecar validate: error: --requests-file {error}", file=sys.stderr)
        return EXIT_ERROR
    return gate(settings, spec, Path(args.report) if args.report else None, show_progress=not args.quiet)


def gate(settings, spec: Spec, report_path: Path | None, show_progress: bool = True) -> int:
    """Load, judge, print the table, write the report: 0 on PASS, 1 on FAIL, 2 if the engine cannot be loaded.

    With tenants (settings.tenants), the load is spread over them by weight and each is judged on its own:
    FAIL if any tenant's SLO fails."""
    from .gate import judge, report, table, tenant_summaries, verdict
    from .loadgen import run_load

    how_long = f"{settings.duration_s:g} s" if settings.duration_s else f"{settings.requests} requests"
    mix = (" over " + ", ".join(f"{name} x{weight:g}" for name, weight in settings.tenants)) if settings.tenants else ""
    pace = f"Poisson arrivals at {settings.rate_rps:g}/s" if settings.rate_rps else f"{settings.concurrency} at a time"
    print(f"validate: {how_long} to {settings.url}{mix}, {pace}, ~{settings.prompt_tokens} "
          f"prompt words, {settings.max_tokens} output tokens, {'streamed' if settings.stream else 'not streamed'}",
          file=sys.stderr)
    try:
        run = asyncio.run(run_load(settings, show_progress=show_progress))
    except (OSError, RuntimeError) as error:  # aiohttp's connection errors are OSErrors
        print(f"slo-sidecar: error: cannot load {settings.url}: {error}", file=sys.stderr)
        return EXIT_ERROR
    peaks = asdict(run.peaks)
    names = [name for name, _ in settings.tenants]
    summary, criteria = judge(spec, run.results, run.wall_s, run.metrics_before, run.metrics_after, names)
    tenants = tenant_summaries(run.results, run.wall_s, names) if names else None
    print(table(summary, criteria, peaks, tenants))
    if report_path:
        settings_dict = {k: v for k, v in asdict(settings).items() if k != "api_key"}
        text = json.dumps(report(settings_dict, run.model, summary, criteria, peaks, tenants), indent=2) + "\n"
        write_atomically(report_path, text)
        print(f"report: {report_path}", file=sys.stderr)
    return 0 if verdict(criteria, names) else EXIT_FAIL


def run_compare(args: argparse.Namespace, spec: Spec) -> int:
    """The same request mix to the baseline and the canary at once; each judged as the gate judges, then the
    two compared SLO by SLO (compare.py): 1 when the canary is worse on any."""
    from .compare import compare, table as comparison_table
    from .gate import judge, table
    from .loadgen import RequestFileError, run_load

    try:
        sides = {"baseline": settings_from(args, args.baseline), "canary": settings_from(args, args.canary)}
    except RequestFileError as error:
        print(f"slo-sidecar validate: error: --requests-file {error}", file=sys.stderr)
        return EXIT_ERROR
    print(f"validate: the same {args.requests} requests to the baseline {args.baseline} and the canary "
          f"{args.canary}, at once", file=sys.stderr)

    async def both():
        return await asyncio.gather(*(run_load(settings, show_progress=False) for settings in sides.values()))
    try:
        runs = dict(zip(sides, asyncio.run(both())))
    except (OSError, RuntimeError) as error:
        print(f"slo-sidecar: error: cannot load both engines: {error}", file=sys.stderr)
        return EXIT_ERROR
    names = [name for name, _ in sides["canary"].tenants]
    criteria = {}
    for side, run in runs.items():
        summary, criteria[side] = judge(spec, run.results, run.wall_s, run.metrics_before, run.metrics_after, names)
        print(f"\n{side}: {sides[side].url}")
        print(table(summary, criteria[side], asdict(run.peaks)))
    comparisons = compare(criteria["baseline"], criteria["canary"])
    print("\ncanary against baseline (one-sided two-proportion z-test; worse when p < 0.05 over the number of "
          "criteria tested; each side's own verdict in brackets):")
    print(comparison_table(comparisons))
    worse = sorted({c.slo for c in comparisons if c.worse})
    print(f"\n{'FAIL: the canary is worse on ' + ', '.join(worse) if worse else 'PASS: the canary is not worse'}")
    return EXIT_FAIL if worse else 0


def run(args: argparse.Namespace, spec: Spec) -> int:
    if args.baseline or args.canary:
        clashes = [flag for flag, given in (("--url", args.url), ("--metrics-url", args.metrics_url),
                                            ("--golden", args.golden), ("--golden-out", args.golden_out)) if given]
        if not (args.baseline and args.canary):
            why = f"{'--baseline' if args.canary else '--canary'} is needed with it"
        elif clashes:
            why = f"{clashes[0]} does not go with --baseline and --canary"
        else:
            return run_compare(args, spec)
        print(f"slo-sidecar validate: error: {why}", file=sys.stderr)
        return EXIT_ERROR
    if not args.url:
        if args.golden or args.golden_out:
            print("slo-sidecar validate: error: --golden and --golden-out need --url, the engine to score",
                  file=sys.stderr)
            return EXIT_ERROR
        describe_spec(spec)
        return 0
    from . import golden_gate

    token = api_key(args)
    try:
        if args.golden_out:  # recording a baseline is its own act: no load test
            golden_gate.record(args.url, spec, Path(args.golden_out), token)
            return 0
        golden_passed = golden_gate.check(args.url, spec, Path(args.golden), token) if args.golden else True
    except golden_gate.GoldenGateError as error:
        print(f"slo-sidecar validate: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    verdict = run_gate(args, spec)
    return verdict if verdict != 0 or golden_passed else EXIT_FAIL


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slo", help="the SLO spec (default: the embedded slo.yaml)")
    gate = parser.add_argument_group("load-test gate (with --url)")
    gate.add_argument("--url", type=http_url, help="the engine's base URL, e.g. http://localhost:8000: load it and judge against the spec")
    gate.add_argument("--baseline", type=http_url, help="with --canary: the engine now serving (its base URL); "
                      "both get the same requests at once, and the canary fails when it is worse on any SLO")
    gate.add_argument("--canary", type=http_url, help="with --baseline: the candidate engine's base URL")
    gate.add_argument("--concurrency", type=positive(int), default=4, help="requests in flight at once (default: 4)")
    gate.add_argument("--rate", type=positive(float), help="open loop: requests arrive as a Poisson process at this "
                      "many per second, whatever the server's pace (as `capacity` loads it); --concurrency is then "
                      "no limit")
    gate.add_argument("--seed", type=int, default=1, help="of the --rate arrival times (default: 1)")
    gate.add_argument("--requests-file", help="JSON lines, one request each ({\"prompt\": ..., \"max_tokens\": N} or "
                      "{\"prompt_tokens\": N, \"max_tokens\": N}), sent in turn instead of --prompt-tokens and "
                      "--max-tokens")
    gate.add_argument("--requests", type=positive(int), default=100, help="how many requests (default: 100)")
    gate.add_argument("--duration", type=positive(float), help="run for this many seconds instead of a request count")
    gate.add_argument("--prompt-tokens", type=positive(int), default=64, help="prompt length in words, ~tokens (default: 64)")
    gate.add_argument("--max-tokens", type=positive(int), default=32, help="tokens to generate per request (default: 32)")
    gate.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                      help="stream responses (default); TTFT and inter-token latency need it")
    gate.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    gate.add_argument("--metrics-url", help="the engine's /metrics, if not URL/metrics (an engine started with "
                      "--metrics-port); without it the gate judges from the client's view only")
    gate.add_argument("--model", metavar="NAME[=WEIGHT]", type=tenant, action=_Tenants,
                      help="a served model or LoRA adapter to load; repeat it for several tenants, the load spread "
                      "over them by WEIGHT (a number > 0, default 1), each judged against the SLOs that apply to "
                      "it on its own requests and counters (default: the first model the server lists, all "
                      "events judged together)")
    gate.add_argument("--api-key", help="bearer token (default: $SLO_ENGINE_API_KEY)")
    gate.add_argument("--report", default="validate-report.json", help="JSON report path (default: validate-report.json; '' for none)")
    gate.add_argument("--quiet", action="store_true", help="no progress bar")
    golden = parser.add_argument_group("golden probes (with --url; the set and the tolerance: the spec's correctness)")
    exclusive = golden.add_mutually_exclusive_group()
    exclusive.add_argument("--golden-out", metavar="FILE", help="score the golden set on the engine and write "
                           "that baseline to FILE (before a rollout; no load test)")
    exclusive.add_argument("--golden", metavar="FILE", help="fail the engine if any golden item scores further "
                           "than the tolerance from the baseline in FILE (then the load test, as without it)")
