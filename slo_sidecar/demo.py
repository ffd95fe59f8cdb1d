"""`slo-sidecar demo`: the whole pod on one machine, a failure burst, and the page it causes.

Real processes talking HTTP on loopback: the vLLM engine on the embedded tiny
model, the sidecar beside it (with one fake GPU, named as such, since this
machine has none), Prometheus with the rules generated from the SLO spec, and
Alertmanager with the generated routing, which the page goes through.
It gates the engine with `validate`, drives a load, injects a burst of
failures, and shows burn rates climbing and the page alert going pending,
then firing, in Prometheus. It writes the rules, dashboards and preview pages
and stops every process it started on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import aiohttp

from iokit.arguments import positive
from iokit.files import write_atomically
from slo_spec.load import DEFAULT_SPEC, SpecError, load_spec
from slo_spec.model import Slo, Spec

from alerts.render import ALERTMANAGER_FILE

from .processes import AlertmanagerProcess, EngineProcess, PrometheusProcess, SidecarProcess

SCRAPE_S, EVALUATE_S = 2, 5
HEALTHY_S, BURST_MAX_S, RECOVERY_S, VIEW_EVERY_S = 30, 240, 30, 5
BURST_ERROR_RATIO = 0.5
CLIENTS = 6  # above the engine's 4 slots, so a queue forms
ENGINE_ARGS = ("--max-num-seqs", "4", "--max-waiting-requests", "32")


def step(number: int, text: str) -> None:
    print(f"\n[{number}/6] {text}", flush=True)


def write_generated(spec: Spec, out: Path) -> list[Path]:
    from .generated import generated_files

    files = generated_files(spec, out / "rules", out / "dashboards")
    for path, text in files.items():
        write_atomically(path, text)
    rules = sorted(path for path in files if path.name.endswith(".rules.yaml"))
    print(f"  {len(rules)} rule files in {out / 'rules'}, {len(files) - len(rules)} dashboard files in "
          f"{out / 'dashboards'}")
    return rules


class LiveView:
    """A line every few seconds from Prometheus: traffic, the SLO's burn rates, its page alert, the queue."""

    def __init__(self, prometheus: PrometheusProcess, spec: Spec, slo: Slo):
        self.prometheus, self.slo = prometheus, slo
        selector = f'sloth_service="{spec.service}", sloth_slo="{slo.name}"'
        budget = slo.error_budget
        self.queries = {
            "req/s": 'sum(rate(slo_engine_http_requests_total{endpoint=~"/v1/.*"}[30s]))',
            "errors": f"slo:sli_error:ratio_rate5m{{{selector}}}",
            "burn 5m": f"slo:sli_error:ratio_rate5m{{{selector}}} / {budget}",
            "burn 1h": f"slo:sli_error:ratio_rate1h{{{selector}}} / {budget}",
            "budget": f"slo:period_error_budget_remaining:ratio{{{selector}}}",
            "sidecar 5m": f'slo_burn_rate{{slo="{slo.name}", window="5m"}}',
            "queue": "sum(vllm:num_requests_waiting)",
        }
        self.alert = f'ALERTS{{alertname="{slo.alert_name}", tier="page"}}'
        self.states_seen: dict[str, float] = {}
        self.has_data = False  # Prometheus has the rules' first values (burn 1h, budget)

    def header(self) -> str:
        return f"  {'time':>6} {'req/s':>6} {'errors':>7} {'burn 5m':>8} {'burn 1h':>8} {'budget':>7} " \
               f"{'sidecar 5m':>10} {'page alert':>11} {'queue':>5}  what is happening"

    def _ask(self, expr: str) -> list[dict] | None:
        """The query's result; None when Prometheus did not answer in time (on 2 busy cores it
        sometimes does not): the line shows "?" and the demo goes on."""
        try:
            return self.prometheus.query(expr)
        except (OSError, RuntimeError):
            return None

    def value(self, expr: str) -> float | None:
        """The first series' value; None for no series, NaN for no answer."""
        result = self._ask(expr)
        return math.nan if result is None else float(result[0]["value"][1]) if result else None

    def page_state(self) -> str:
        result = self._ask(self.alert)
        if result is None:
            return "?"
        states = {item["metric"]["alertstate"] for item in result}
        return "firing" if "firing" in states else "pending" if "pending" in states else "inactive"

    def line(self, elapsed: float, phase: str) -> str:
        values = {name: self.value(expr) for name, expr in self.queries.items()}
        self.has_data = self.has_data or all(values[name] is not None and not math.isnan(values[name])
                                             for name in ("burn 1h", "budget"))
        state = self.page_state()
        if state != "?":
            self.states_seen.setdefault(state, elapsed)

        def show(name: str, form: str) -> str:
            value = values[name]
            return "-" if value is None else "?" if math.isnan(value) else form.format(value)

        return (f"  {elapsed:5.0f}s {show('req/s', '{:.1f}'):>6} {show('errors', '{:.1%}'):>7} "
                f"{show('burn 5m', '{:.1f}x'):>8} {show('burn 1h', '{:.1f}x'):>8} {show('budget', '{:.1%}'):>7} "
                f"{show('sidecar 5m', '{:.1f}x'):>10} "
                f"{state:>11} {show('queue', '{:.0f}'):>5}  {phase}")


async def drive_load(engine: EngineProcess, view: LiveView) -> None:
    """Clients at a steady rate; healthy, then a failure burst until the page fires, then healed."""
    stop = asyncio.Event()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def client() -> None:
            while not stop.is_set():
                try:
                    async with session.post(engine.url + "/v1/completions", json={
                            "prompt": "the error budget", "max_tokens": 24, "ignore_eos": True}) as response:
                        await response.read()
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)

        async def faults(ratio: float) -> None:
            async with session.post(engine.faults_url, json={"error_ratio": ratio},
                                    headers=engine.admin_headers) as response:
                response.raise_for_status()

        clients = [asyncio.create_task(client()) for _ in range(CLIENTS)]
        print("  (lines start once Prometheus has evaluated the rules; every series the SLIs read exists at 0 "
              "from the first scrape, so a healthy service reads burn 0.0x and budget 100% from then on)")
        print(view.header(), flush=True)
        started = time.monotonic()
        burst_at = recovered_at = None
        try:
            while True:
                await asyncio.sleep(VIEW_EVERY_S)
                elapsed = time.monotonic() - started
                if burst_at is None and elapsed >= HEALTHY_S:
                    await faults(BURST_ERROR_RATIO)
                    burst_at = elapsed
                if recovered_at is None and burst_at is not None and (
                        "firing" in view.states_seen or elapsed - burst_at > BURST_MAX_S):
                    await faults(0.0)
                    recovered_at = elapsed
                phase = ("healthy" if burst_at is None else
                         f"burst: {BURST_ERROR_RATIO:.0%} of requests fail" if recovered_at is None else
                         "healed: no new errors; the burst stays in the windows")
                line = await asyncio.to_thread(view.line, elapsed, phase)
                if view.has_data or burst_at is not None:
                    print(line, flush=True)
                if recovered_at is not None and elapsed - recovered_at >= RECOVERY_S:
                    return
        finally:
            stop.set()
            await asyncio.gather(*clients, return_exceptions=True)
            await faults(0.0)


def report_routing(manager: AlertmanagerProcess, alert: str, wait_s: float = 30.0) -> bool:
    """Whether the page reached Alertmanager's page receiver (Prometheus sends within a few seconds);
    prints what each receiver holds and what the page's inhibition holds back."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            groups = manager.groups(inhibited=False)
            held = [a["labels"]["alertname"] + " (" + a["labels"].get("tier", "?") + ")" for a in manager.alerts()
                    if a["status"]["inhibitedBy"]]
        except (OSError, RuntimeError):
            groups, held = [], []
        by_receiver: dict[str, list[str]] = {}
        for group in groups:
            by_receiver.setdefault(group["receiver"]["name"], []).extend(
                a["labels"]["alertname"] for a in group["alerts"])
        if alert in by_receiver.get("page", []) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    for receiver, alerts in sorted(by_receiver.items()):
        print(f"  Alertmanager: receiver {receiver!r} notified of {', '.join(sorted(set(alerts)))}")
    if held:
        print(f"  Alertmanager: held back by the page (inhibited): {', '.join(sorted(set(held)))}")
    if alert not in by_receiver.get("page", []):
        print(f"  Alertmanager: the page {alert} did not reach the 'page' receiver within {wait_s:.0f} s")
        return False
    return True


def run(args: argparse.Namespace) -> int:
    # Ctrl-C and SIGTERM both unwind run_demo's stack, which stops every process it started. SIGINT is
    # set explicitly: a shell starting the demo in the background would otherwise have it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return run_demo(args)
    except (KeyboardInterrupt, SystemExit) as stop:
        print("\ndemo: interrupted; every process it started has been stopped", flush=True)
        return 130 if isinstance(stop, KeyboardInterrupt) else 143


def run_demo(args: argparse.Namespace) -> int:
    for binary, package in ((args.prometheus, "prometheus"), (args.alertmanager, "prometheus-alertmanager")):
        if shutil.which(binary) is None:
            print(f"slo-sidecar: error: no binary {binary!r}: install Debian's {package} package "
                  "(scripts/demo.sh does)", file=sys.stderr)
            return 2
    from alerts.rules import PAGE_FOR
    from dashboards.definitions import dashboards

    try:
        spec = load_spec(args.slo or str(DEFAULT_SPEC))
    except SpecError as exc:
        print(f"slo-sidecar demo: error: {exc}", file=sys.stderr)
        return 2
    boards = dashboards(spec)
    slo = next((s for s in spec.slos if s.sli.kind == "availability"), spec.slos[0])
    out = Path(args.out).resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    print(f"demo: everything it writes goes to {out} (process logs in {logs})")
    begun = time.monotonic()
    with ExitStack() as stack:
        step(1, f"Generating Prometheus rules and Grafana dashboards from {spec.source}")
        rules = write_generated(spec, out)

        step(2, "Starting the engine (vLLM, tiny-llama), the sidecar, Alertmanager and Prometheus with the generated "
                "rules")
        engine = stack.enter_context(EngineProcess(logs / "engine.log", *ENGINE_ARGS, fault_injection=True).start())
        print(f"  engine on {engine.url}: ready in {engine.wait_ready():.0f} s")
        sidecar = stack.enter_context(SidecarProcess(
            logs / "sidecar.log", engine.url, "--engine-interval-s", "1", "--fake-gpu", "1",
            "--engine-pid", str(engine.process.pid), "--gpu-interval-s", "1", "--gpu-hourly-usd", "2.5").start())
        sidecar.wait_ready()
        print(f"  sidecar on {sidecar.url} (its GPU is a FAKE H100 replayed through NVML's API: no NVIDIA GPU here)")
        tsdb = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="slo-sidecar-demo-prometheus-")))
        manager = stack.enter_context(AlertmanagerProcess(tsdb, out / "rules" / ALERTMANAGER_FILE,
                                                          binary=args.alertmanager).start())
        manager.wait_ready()
        print(f"  Alertmanager on {manager.url} with the generated routing and inhibitions")
        targets = {"engine": engine.url.removeprefix("http://"), "sidecar": sidecar.url.removeprefix("http://")}
        prometheus = stack.enter_context(PrometheusProcess(
            tsdb, targets, rules, scrape_interval=f"{SCRAPE_S}s", evaluation_interval=f"{EVALUATE_S}s",
            binary=args.prometheus, extra_args=("--enable-feature=exemplar-storage",),
            alertmanager_url=manager.url).start())
        prometheus.wait_ready()
        loaded = prometheus.rule_groups()
        print(f"  Prometheus on {prometheus.url}: {sum(len(g['rules']) for g in loaded)} rules in {len(loaded)} "
              f"groups, scraping every {SCRAPE_S} s")

        step(3, f"Load-test gate: slo-sidecar validate --url {engine.url} --requests {args.validate_requests}")
        from .loadgen import LoadSettings
        from .validate import gate

        verdict = gate(LoadSettings(engine.url, concurrency=4, requests=args.validate_requests, max_tokens=16),
                       spec, out / "validate-report.json", show_progress=False)
        print(f"  gate exit code {verdict} ({'PASS' if verdict == 0 else 'FAIL'}); report in "
              f"{out / 'validate-report.json'}")

        step(4, f"Load from {CLIENTS} clients; after {HEALTHY_S} s, {BURST_ERROR_RATIO:.0%} of requests fail until "
                f"the {slo.name} page fires. Live from Prometheus every {VIEW_EVERY_S} s:")
        view = LiveView(prometheus, spec, slo)
        asyncio.run(drive_load(engine, view))
        seen = view.states_seen
        paged = False
        if "firing" in seen:
            print(f"  the page alert {slo.alert_name} went pending at {seen.get('pending', seen['firing']):.0f} s and "
                  f"fired at {seen['firing']:.0f} s (its rule holds {PAGE_FOR} in pending)")
            paged = report_routing(manager, slo.alert_name)
        else:
            print(f"  the page alert {slo.alert_name} did not fire (states seen: {', '.join(seen)})")

        step(5, "Drawing the dashboards from Prometheus as static pages (slo-sidecar preview)")
        from .preview import write_preview

        empty = write_preview(prometheus.url, boards, out / "preview", [300, 900, 3600], SCRAPE_S)
        for path, titles in empty.items():
            print(f"  {path}" + (f"  (no data: {', '.join(titles)})" if titles else ""))

        step(6, "Stopping the engine, the sidecar, Prometheus and Alertmanager")
    print(f"\ndemo: done in {time.monotonic() - begun:.0f} s. What it wrote, in {out}:")
    print("  rules/       Prometheus recording and alerting rules (promtool-clean), an Alertmanager configuration")
    print("  dashboards/  Grafana dashboards (import format) and datasource provisioning")
    print(f"  preview/     the dashboards as static HTML pages: open {out / 'preview' / (boards[0].uid + '.html')}")
    print("  validate-report.json, logs/")
    return 0 if paged else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo-output", help="where the rules, dashboards, preview pages, report "
                        "and logs go (default: ./demo-output)")
    parser.add_argument("--slo", help="the SLO spec (default: the embedded slo.yaml)")
    parser.add_argument("--prometheus", default="prometheus", help="the Prometheus binary (default: prometheus)")
    parser.add_argument("--alertmanager", default="prometheus-alertmanager",
                        help="the Alertmanager binary (default: Debian's prometheus-alertmanager)")
    parser.add_argument("--validate-requests", type=positive(int), default=40, help="requests the gate sends (default: 40)")
