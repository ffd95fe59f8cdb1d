"""`slo-sidecar lab`: the incident lab's command line and its table."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from slo_sidecar.iokit.arguments import non_negative_float
from slo_sidecar.iokit.files import write_atomically
from slo_sidecar.spec.load import DEFAULT_SPEC, load_spec

from .run import Row, as_json, readable, run_lab, write_rules

COLUMNS = ("scenario", "expected", "page after", "ticket after", "false fires", "")


def table(rows: list[Row]) -> str:
    """A Markdown table: it reads on a terminal and goes into docs/lab.md as it is."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        page = f"{readable(row.page_s)} ({row.page_alert})" if row.page_alert else "-"
        ticket = f"{readable(row.ticket_s)} ({row.ticket_alert})" if row.ticket_alert else "-"
        wrong = "; ".join(row.false_fires + [f"missing: {m}" for m in row.missing]) or "0"
        lines.append(f"| {row.scenario} | {row.expected} | {page} | {ticket} | {wrong} | "
                     f"{'pass' if row.passed else 'FAIL'} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from .correctness import correctness_scenarios
    from .live import sigkilled_engine

    spec = load_spec(str(DEFAULT_SPEC))  # the expectations are worked out for the default spec's objectives
    workdir = Path(tempfile.mkdtemp(prefix="slo-sidecar-lab-")) if args.out is None else Path(args.out).resolve()
    if args.out is not None and workdir.exists() and any(workdir.iterdir()):
        print(f"slo-sidecar lab: error: --out {args.out}: not empty; the lab writes a fresh Prometheus there",
              file=sys.stderr)
        return 2
    workdir.mkdir(parents=True, exist_ok=True)
    if args.json:  # before minutes of work, not after: a path that cannot be written is exit 2 now
        Path(args.json).resolve().parent.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    print(f"lab: replaying incidents into a real Prometheus (work files in {workdir})", flush=True)
    try:
        if args.no_live:
            rows, problems = run_lab(spec, workdir)
        else:
            # The replays are promtool and a Prometheus over past data; the live scenario mostly waits for its
            # alerts in real time: side by side, the lab takes about as long as the live scenario alone.
            rules_dir = write_rules(spec, workdir)
            print("lab: the live scenarios: real engines, sidecars, Prometheus and Alertmanager; SIGKILL, corrupted "
                  f"weights, NaN logits, {args.healthy_minutes:g} min healthy", flush=True)
            # The correctness engine starts once the SIGKILL's engine is killed (its traffic before the kill is
            # what the outage page counts on), and the healthy sweep, which saturates the machine, once the
            # SIGKILL scenario is over.
            killed, killed_done = threading.Event(), threading.Event()
            with ThreadPoolExecutor(max_workers=2) as beside:
                replayed = beside.submit(run_lab, spec, workdir, (), rules_dir)
                wrong = beside.submit(correctness_scenarios, spec, rules_dir, workdir / "correctness",
                                      args.healthy_minutes * 60, killed, killed_done)
                try:
                    live = sigkilled_engine(spec, rules_dir, workdir / "live", killed)
                finally:
                    killed.set()
                    killed_done.set()
                rows, problems = replayed.result()
                rows += [live, *wrong.result()]
    finally:
        if args.out is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(table(rows))
    for row in rows:
        print(f"  {row.scenario}: {row.why}" + (f"; releases {row.release}" if row.release else "")
              + (f"; Alertmanager: {row.notified}" if row.notified else "")
              + (f"; seen: {row.measured}" if row.measured else ""))
    for problem in problems:
        print(f"  healthy service: {problem}")
    if args.json:
        write_atomically(Path(args.json), json.dumps(as_json(rows, problems), indent=2) + "\n")
    failed = [row.scenario for row in rows if not row.passed]
    print(f"lab: {len(rows) - len(failed)} of {len(rows)} scenarios as expected"
          + (", the healthy service at burn 0 and budget 100% from its first minute" if not problems else "")
          + f", in {time.monotonic() - began:.0f} s")
    return 1 if failed or problems else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="keep the work files (TSDB, rules, logs) in this empty directory "
                        "(default: a temporary one, removed)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--no-live", action="store_true", help="skip the live scenarios (the SIGKILLed engine, the "
                        "corrupted model, the healthy engine under a sweeping batch)")
    parser.add_argument("--healthy-minutes", type=non_negative_float, default=10.0,
                        help="how long the live healthy engine runs under a batch sweeping from 1 to its limit, "
                        "with not one bad golden probe allowed (default: 10; 0: not at all)")
