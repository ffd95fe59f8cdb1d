"""The one console command, `slo-sidecar`, and its subcommands.

Each subcommand's module is imported only when it runs: the engine pulls in
vLLM and torch, which the sidecar and the generators must never pay for.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable
from pathlib import Path

from . import __version__


def _build_model(args: argparse.Namespace) -> int:
    if args.lora:
        return _build_lora(args)
    from slo_sidecar.engine.tiny_model import build_model, default_model_dir, is_built

    out = Path(args.out) if args.out else default_model_dir()
    if is_built(out) and not args.force:
        print(f"model already built: {out}")
        return 0
    print(f"built: {build_model(out)}")
    return 0


def _build_lora(args: argparse.Namespace) -> int:
    from slo_sidecar.engine.tiny_lora import build_lora, check_name, default_lora_dir, is_built

    try:
        check_name(args.lora)
    except ValueError as exc:
        print(f"slo-sidecar build-model: error: --lora: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else default_lora_dir(args.lora)
    if is_built(out) and not args.force:
        print(f"adapter already built: {out}")
        return 0
    print(f"built: {build_lora(args.lora, out)}")
    return 0


def _engine(arguments: list[str]) -> int:
    """Every flag after `engine` goes to the launcher: ours, then vLLM's parser for the rest."""
    from slo_sidecar.engine.launch import main as launch

    return launch(arguments)


def _sidecar(args: argparse.Namespace) -> int:
    from slo_sidecar.sidecar.app import run

    return run(args)


def _load_spec(path: str | None):
    """The spec, or None after printing why it cannot be used (the caller exits 2)."""
    from slo_sidecar.spec.load import DEFAULT_SPEC, SpecError, load_spec

    try:
        return load_spec(path or str(DEFAULT_SPEC))
    except SpecError as exc:
        print(f"slo-sidecar: error: {exc}", file=sys.stderr)
        return None


def _validate(args: argparse.Namespace) -> int:
    from .validate import run

    spec = _load_spec(args.slo)
    return 2 if spec is None else run(args, spec)


def _capacity(args: argparse.Namespace) -> int:
    from .capacity import run

    spec = _load_spec(args.slo)
    return 2 if spec is None else run(args, spec)


SPLIT = "local,global"


def _generate(args: argparse.Namespace) -> int:
    from slo_sidecar.iokit.files import write_atomically
    from slo_sidecar.spec.golden import GoldenError
    from .generated import generated_files

    if args.split not in (None, SPLIT):
        print(f"slo-sidecar: error: --split: expected {SPLIT!r} (the local and the global part), got "
              f"{args.split!r}", file=sys.stderr)
        return 2
    spec = _load_spec(args.slo)
    if spec is None:
        return 2
    out = Path(args.out)
    board_dir = Path(args.dashboards_out) if args.dashboards_out else out / "dashboards"
    try:
        files = generated_files(spec, out, board_dir, Path(args.k8s) if args.k8s else None, split=bool(args.split))
    except GoldenError as error:
        print(f"slo-sidecar: error: {args.slo or 'the embedded spec'}: correctness.golden_set: {error}",
              file=sys.stderr)
        return 2
    for path, text in files.items():
        changed = write_atomically(path, text)
        print(f"{'wrote' if changed else 'unchanged'} {path}")
    for slo in spec.slos:
        if not slo.sli.sidecar_can_evaluate:
            what = "is a time-slice SLO" if slo.sli.timeslices else "has a PromQL SLI"
            print(f"note: {slo.name} {what}: the rules cover it, the sidecar serves no live burn rates for it")
    return 0


def _preview(args: argparse.Namespace) -> int:
    from .preview import run

    spec = _load_spec(args.slo)
    return 2 if spec is None else run(args, spec)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    return run(args)


def _budget(args: argparse.Namespace) -> int:
    from .budget import run

    return run(args)


def _lab(args: argparse.Namespace) -> int:
    from .lab.command import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slo-sidecar", description="Observability and SLO monitoring for LLM inference pods running vLLM.")
    parser.add_argument("--version", action="version", version=f"slo-sidecar {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    build = commands.add_parser("build-model", help="build the embedded tiny Llama model, or with --lora one of its "
                                "LoRA adapters")
    build.add_argument("--out", help="directory to write (default: the user cache)")
    build.add_argument("--force", action="store_true", help="rebuild even if already built")
    build.add_argument("--lora", metavar="NAME", help="build a small deterministic LoRA adapter NAME for the embedded "
                       "model (PEFT format), to serve with --enable-lora --lora-modules NAME=DIR")
    build.set_defaults(func=_build_model)

    commands.add_parser("engine", add_help=False, help="vLLM's OpenAI-compatible server with our "
                                 "instrumentation; takes any `vllm serve` flag (engine/launch.py)")
    # Listed for --help only: main() hands everything after `engine` to the launcher before argparse sees it.

    from slo_sidecar.sidecar.config import add_arguments as add_sidecar_arguments

    from .capacity import add_arguments as add_capacity_arguments
    from .demo import add_arguments as add_demo_arguments
    from .lab.command import add_arguments as add_lab_arguments
    from .preview import add_arguments as add_preview_arguments
    from .validate import add_arguments as add_validate_arguments

    def subcommand(name: str, help_text: str, add_arguments: Callable[[argparse.ArgumentParser], None],
                   func: Callable[[argparse.Namespace], int]) -> None:
        command = commands.add_parser(name, help=help_text)
        add_arguments(command)
        command.set_defaults(func=func)

    subcommand("sidecar", "run the sidecar: scrape the engine, serve derived metrics", add_sidecar_arguments,
               _sidecar)

    subcommand("validate", "check an SLO spec (ours or Sloth's prometheus/v1); with --url, load an engine and "
               "PASS/FAIL it against the spec", add_validate_arguments, _validate)
    subcommand("capacity", "find the highest request rate an engine serves within every SLO of the spec "
               "(open-loop load at stepped rates)", add_capacity_arguments, _capacity)

    generate = commands.add_parser("generate", help="write Prometheus rules, Alertmanager inhibitions and Grafana dashboards from an SLO spec")
    generate.add_argument("--slo", help="the SLO spec (default: the embedded slo.yaml)")
    generate.add_argument("--out", required=True, help="directory to write the rule files into")
    generate.add_argument("--dashboards-out", help="directory for the Grafana dashboards (default: OUT/dashboards)")
    generate.add_argument("--k8s", metavar="DIR", help="also write the Kubernetes objects that come from the spec "
                          "(PrometheusRule, dashboard and datasource ConfigMaps, the spec's ConfigMap) into DIR")
    generate.add_argument("--split", metavar=SPLIT, help="write the rules in two parts: OUT/local/ reads the "
                          "scraped series (load it on every Prometheus), OUT/global/ reads only their recordings "
                          "(long windows, SLOs, alerts: load it on Thanos Ruler, Mimir's ruler or vmalert over "
                          "the long-term store)")
    generate.set_defaults(func=_generate)

    subcommand("preview", "draw each dashboard as a static HTML page from a Prometheus", add_preview_arguments,
               _preview)
    subcommand("demo", "run the engine, send requests, show its metrics, stop", add_demo_arguments, _demo)
    from .budget import add_arguments as add_budget_arguments

    subcommand("budget", "each SLO's error budget left and the release policy's verdict, from a Prometheus that "
               "runs the generated rules; exit 1 while releases are frozen", add_budget_arguments, _budget)
    subcommand("lab", "replay incidents into a real Prometheus and Alertmanager with the generated rules; a table "
               "of when each page and ticket came, against the SRE Workbook's arithmetic", add_lab_arguments, _lab)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["engine"]:  # vLLM's flags are vLLM's parser's: ours cannot list them
        return _engine(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except OSError as exc:  # a path that cannot be created, read or written; a binary not installed
        print(f"slo-sidecar {args.command}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2


def describe_os_error(exc: OSError) -> str:
    """'PATH: reason' in one line, as the shell would say it."""
    where = exc.filename if exc.filename is not None else ""
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    reason = exc.strerror or str(exc)
    return f"{where}: {reason}" if where else reason


if __name__ == "__main__":
    sys.exit(main())
