"""`slo-sidecar demo`: the whole pod on one machine, two tenants, a failure burst on one, and its page.

Real processes talking HTTP on loopback: the vLLM engine on the embedded tiny
model with two LoRA adapters (the tenants medical and legal), the sidecar
beside it (with one fake GPU, named as such, since this machine has none),
Prometheus with the rules generated from the SLO spec sliced per tenant, and
Alertmanager with the generated routing, which the page goes through.
It gates the engine with `validate` per tenant, drives a load on both, injects
a burst of failures into legal's requests alone, and shows legal's burn rates
climbing and its page going pending, then firing, while medical's budget stays
whole. It writes the rules, dashboards and preview pages and stops every
process it started on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import aiohttp

import yaml

from slo_sidecar.iokit.arguments import positive
from slo_sidecar.iokit.files import write_atomically
from slo_sidecar.spec.load import DEFAULT_SPEC, SpecError, load_spec
from slo_sidecar.spec.model import GOLDEN_PROBES, Slo, Spec
from slo_sidecar.spec.slicing import sliced_document

from slo_sidecar.alerts.render import ALERTMANAGER_FILE
from slo_sidecar.alerts.rules import slo_id

from .processes import AlertmanagerProcess, EngineProcess, PrometheusProcess, SidecarProcess

SCRAPE_S, EVALUATE_S = 2, 5
HEALTHY_S, BURST_MAX_S, RECOVERY_S, VIEW_EVERY_S = 30, 240, 30, 5
BURST_ERROR_RATIO = 0.5
CLIENTS = 6  # above the engine's 4 slots, so a queue forms
ENGINE_ARGS = ("--max-num-seqs", "4", "--max-waiting-requests", "32")
# The tenants: LoRA adapters of the embedded model, built on first use. Failures go to FAILING alone; the
# availability objectives differ (legal's is looser), as tenants' contracts do.
TENANTS = ("medical", "legal")
FAILING, HEALTHY = "legal", "medical"
TENANT_OBJECTIVES = {"availability": {"medical": 99.9, "legal": 99.0}}


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
    """A line every few seconds from Prometheus: traffic, and per watched slice (a tenant's SLO) its burn
    rates, budget and page alert; the queue."""

    def __init__(self, prometheus: PrometheusProcess, spec: Spec, slos: list[Slo]):
        self.prometheus, self.slos = prometheus, slos
        self.queries = {"req/s": 'sum(rate(slo_engine_http_requests_total{endpoint=~"/v1/.*"}[30s]))'}
        self.alerts: dict[str, str] = {}
        for slo in slos:
            selector = f'sloth_id="{slo_id(spec, slo)}"'
            who = self.who(slo)
            self.queries |= {
                f"{who} burn 5m": f"slo:sli_error:ratio_rate5m{{{selector}}} / {slo.error_budget}",
                f"{who} burn 1h": f"slo:sli_error:ratio_rate1h{{{selector}}} / {slo.error_budget}",
                f"{who} budget": f"slo:period_error_budget_remaining:ratio{{{selector}}}",
            }
            self.alerts[who] = f'ALERTS{{alertname="{slo.alert_name}", tier="page", {selector}}}'
        self.queries["queue"] = "sum(vllm:num_requests_waiting)"
        self.states_seen: dict[str, dict[str, float]] = {self.who(slo): {} for slo in slos}
        self.has_data = False  # Prometheus has the rules' first values (burn 1h, budget)

    @staticmethod
    def who(slo: Slo) -> str:
        return next(iter(slo.slice.values()), slo.name)

    def header(self) -> str:
        tenants = "".join(f" | {self.who(slo) + ': burn 5m, 1h, budget, page':>38}" for slo in self.slos)
        return f"  {'time':>6} {'req/s':>6}{tenants} | {'queue':>5}  what is happening"

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

    def page_state(self, who: str) -> str:
        result = self._ask(self.alerts[who])
        if result is None:
            return "?"
        states = {item["metric"]["alertstate"] for item in result}
        return "firing" if "firing" in states else "pending" if "pending" in states else "inactive"

    def line(self, elapsed: float, phase: str) -> str:
        values = {name: self.value(expr) for name, expr in self.queries.items()}
        self.has_data = self.has_data or all(
            values[name] is not None and not math.isnan(values[name])
            for name in values if name.endswith(("burn 1h", "budget")))

        def show(name: str, form: str) -> str:
            value = values[name]
            return "-" if value is None else "?" if math.isnan(value) else form.format(value)

        cells = [f"  {elapsed:5.0f}s {show('req/s', '{:.1f}'):>6}"]
        for slo in self.slos:
            who = self.who(slo)
            state = self.page_state(who)
            if state != "?":
                self.states_seen[who].setdefault(state, elapsed)
            cells.append(f"{show(f'{who} burn 5m', '{:.1f}x'):>8} {show(f'{who} burn 1h', '{:.1f}x'):>8} "
                         f"{show(f'{who} budget', '{:.1%}'):>8} {state:>10}")
        cells.append(f"{show('queue', '{:.0f}'):>5}  {phase}")
        return " | ".join(cells)


def tenant_spec(source: str, out: Path) -> Path:
    """The spec at `source` sliced per tenant (the demo's tenants, their own availability objectives),
    written to out/slo.yaml: the file the sidecar, the rules and the dashboards read."""
    with open(source, encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    path = out / "slo.yaml"
    write_atomically(path, "# The demo's SLO spec: " + source + ", each SLO judged per tenant.\n" + yaml.safe_dump(
        sliced_document(document, TENANTS, TENANT_OBJECTIVES), sort_keys=False))
    return path


async def drive_load(engine: EngineProcess, view: LiveView) -> None:
    """Clients at a steady rate; healthy, then a failure burst until the page fires, then healed."""
    stop = asyncio.Event()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def client(model: str) -> None:
            while not stop.is_set():
                try:
                    async with session.post(engine.url + "/v1/completions", json={
                            "model": model, "prompt": "the error budget", "max_tokens": 24,
                            "ignore_eos": True}) as response:
                        await response.read()
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)

        async def faults(ratio: float) -> None:
            async with session.post(engine.faults_url, json={"error_ratio": ratio, "model": FAILING},
                                    headers=engine.admin_headers) as response:
                response.raise_for_status()

        clients = [asyncio.create_task(client(TENANTS[i % len(TENANTS)])) for i in range(CLIENTS)]
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
                        "firing" in view.states_seen[FAILING] or elapsed - burst_at > BURST_MAX_S):
                    await faults(0.0)
                    recovered_at = elapsed
                phase = ("healthy" if burst_at is None else
                         f"burst: {BURST_ERROR_RATIO:.0%} of {FAILING}'s requests fail" if recovered_at is None else
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


def report_golden(prometheus: PrometheusProcess, spec: Spec) -> None:
    """The golden probes' results, and why bad ones are expected on this build: they probe the base model."""
    try:
        results = {r["metric"].get("result"): float(r["value"][1])
                   for r in prometheus.query(f"sum by (result) ({GOLDEN_PROBES})")}
    except (OSError, RuntimeError):
        results = {}
    good, bad = results.get("good"), results.get("bad")
    print(f"  golden probes (the base model, every {spec.correctness.interval_s:g} s): "
          f"{'?' if good is None else f'{good:.0f}'} good, {'?' if bad is None else f'{bad:.0f}'} bad")
    if bad:
        print("  the bad ones are true: on vLLM's CPU build, a base-model request batched with LoRA requests gets "
              "the last loaded adapter's weights (vllm-project/vllm#48421; the GPU kernels skip them), so the "
              "correctness page fires. The tenants' own requests get their own adapter.")


def report_routing(manager: AlertmanagerProcess, alert: str, tenant: str, wait_s: float = 30.0) -> bool:
    """Whether the tenant's page reached Alertmanager's page receiver (Prometheus sends within a few
    seconds); prints what each receiver holds (alert and tenant) and what the page's inhibition holds back."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            groups = manager.groups(inhibited=False)
            held = [_named(a["labels"]) + " (" + a["labels"].get("tier", "?") + ")" for a in manager.alerts()
                    if a["status"]["inhibitedBy"]]
        except (OSError, RuntimeError):
            groups, held = [], []
        by_receiver: dict[str, list[str]] = {}
        for group in groups:
            by_receiver.setdefault(group["receiver"]["name"], []).extend(
                _named(a["labels"]) for a in group["alerts"])
        page = _named({"alertname": alert, "model": tenant})
        if page in by_receiver.get("page", []) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    for receiver, alerts in sorted(by_receiver.items()):
        print(f"  Alertmanager: receiver {receiver!r} notified of {', '.join(sorted(set(alerts)))}")
    if held:
        print(f"  Alertmanager: held back by the page (inhibited): {', '.join(sorted(set(held)))}")
    if page not in by_receiver.get("page", []):
        print(f"  Alertmanager: the page {page} did not reach the 'page' receiver within {wait_s:.0f} s")
        return False
    return True


def _named(labels: dict[str, str]) -> str:
    """An alert as the demo prints it: its name, and its tenant where it has one."""
    return labels["alertname"] + (f"{{model={labels['model']}}}" if "model" in labels else "")


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


def engine_cpus() -> frozenset[int] | None:
    """The CPUs the engine may use: all but the last where there are two or more, as a pod's CPU limit
    would hold it. On a 2-core machine an unpinned vLLM takes both, and Prometheus, the sidecar and
    the clients starve: the live lines read "?" and the request rate falls."""
    available = sorted(os.sched_getaffinity(0))
    return frozenset(available[:-1]) if len(available) >= 2 else None


def run_demo(args: argparse.Namespace) -> int:
    for binary, package in ((args.prometheus, "prometheus"), (args.alertmanager, "prometheus-alertmanager")):
        if shutil.which(binary) is None:
            print(f"slo-sidecar: error: no binary {binary!r}: install Debian's {package} package "
                  "(scripts/demo.sh does)", file=sys.stderr)
            return 2
    from slo_sidecar.alerts.rules import PAGE_FOR
    from slo_sidecar.dashboards.definitions import dashboards

    out = Path(args.out).resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        load_spec(args.slo or str(DEFAULT_SPEC))  # its errors name the file given, not the sliced copy
        spec_path = tenant_spec(args.slo or str(DEFAULT_SPEC), out)
        spec = load_spec(str(spec_path))
    except SpecError as exc:
        print(f"slo-sidecar demo: error: {exc}", file=sys.stderr)
        return 2
    boards = dashboards(spec)
    watched = [next(s for s in spec.slos if s.sli.kind == "availability" and s.slice.get("model") == tenant)
               for tenant in (FAILING, HEALTHY)]
    slo = watched[0]
    print(f"demo: everything it writes goes to {out} (process logs in {logs})")
    begun = time.monotonic()
    with ExitStack() as stack:
        step(1, f"Generating Prometheus rules and Grafana dashboards from {spec.source}")
        rules = write_generated(spec, out)

        step(2, f"Starting the engine (vLLM, tiny-llama with the LoRA adapters {' and '.join(TENANTS)}), the "
                "sidecar, Alertmanager and Prometheus with the generated rules")
        from slo_sidecar.engine.tiny_lora import TARGETS as LORA_TARGETS, ensure_lora

        adapters = [f"{tenant}={ensure_lora(tenant)}" for tenant in TENANTS]
        engine = stack.enter_context(EngineProcess(
            logs / "engine.log", *ENGINE_ARGS, "--slo", str(spec_path), "--enable-lora", "--max-loras", "2",
            "--max-lora-rank", "8", "--lora-modules", *adapters,
            # The adapters' own modules, not lm_head: golden probes (prompt_logprobs) beside an lm_head LoRA
            # crash vLLM's engine core, and our middleware refuses them there (docs/correctness.md).
            "--lora-target-modules", *LORA_TARGETS, fault_injection=True, cpus=engine_cpus()).start())
        print(f"  engine on {engine.url}: ready in {engine.wait_ready():.0f} s")
        from .golden_gate import record

        baseline = out / "golden-baseline.json"  # as `slo-sidecar validate --golden-out` records it before a rollout
        record(engine.url, spec, baseline, api_key=None)
        sidecar = stack.enter_context(SidecarProcess(
            logs / "sidecar.log", engine.url, "--slo", str(spec_path), "--engine-interval-s", "1", "--fake-gpu", "1",
            "--engine-pid", str(engine.process.pid), "--gpu-interval-s", "1", "--gpu-hourly-usd", "2.5",
            "--golden-baseline", str(baseline)).start())
        sidecar.wait_ready()
        print(f"  sidecar on {sidecar.url} (its GPU is a FAKE H100 replayed through NVML's API: no NVIDIA GPU here), "
              f"golden probes against {baseline.name}")
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

        step(3, f"Load-test gate: slo-sidecar validate --url {engine.url} --requests {args.validate_requests} "
                + " ".join(f"--model {tenant}" for tenant in TENANTS))
        from .loadgen import LoadSettings
        from .validate import gate

        verdict = gate(LoadSettings(engine.url, concurrency=4, requests=args.validate_requests, max_tokens=16,
                                    tenants=tuple((tenant, 1.0) for tenant in TENANTS)),
                       spec, out / "validate-report.json", show_progress=False)
        print(f"  gate exit code {verdict} ({'PASS' if verdict == 0 else 'FAIL'}); report in "
              f"{out / 'validate-report.json'}")

        step(4, f"Load from {CLIENTS} clients, half on each tenant; after {HEALTHY_S} s, {BURST_ERROR_RATIO:.0%} "
                f"of {FAILING}'s requests fail until its {slo.name} page fires. Live from Prometheus every "
                f"{VIEW_EVERY_S} s:")
        view = LiveView(prometheus, spec, watched)
        asyncio.run(drive_load(engine, view))
        seen, spared = view.states_seen[FAILING], view.states_seen[HEALTHY]
        paged = False
        if "firing" in seen:
            print(f"  {FAILING}'s page alert {slo.alert_name} went pending at {seen.get('pending', seen['firing']):.0f} "
                  f"s and fired at {seen['firing']:.0f} s (its rule holds {PAGE_FOR} in pending)")
            paged = report_routing(manager, slo.alert_name, FAILING)
        else:
            print(f"  {FAILING}'s page alert {slo.alert_name} did not fire (states seen: {', '.join(seen)})")
        budget = view.value(view.queries[f"{HEALTHY} budget"])
        untouched = set(spared) <= {"inactive"} and budget == 1.0
        print(f"  {HEALTHY}: its page states seen: {', '.join(spared) or 'none'}; its budget left "
              f"{'?' if budget is None else f'{budget:.1%}'}" + ("" if untouched else "  (expected: no page, 100%)"))
        report_golden(prometheus, spec)

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
    print("  validate-report.json, golden-baseline.json (the golden probes' baseline), logs/")
    return 0 if paged and untouched else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo-output", help="where the rules, dashboards, preview pages, report "
                        "and logs go (default: ./demo-output)")
    parser.add_argument("--slo", help="the SLO spec (default: the embedded slo.yaml)")
    parser.add_argument("--prometheus", default="prometheus", help="the Prometheus binary (default: prometheus)")
    parser.add_argument("--alertmanager", default="prometheus-alertmanager",
                        help="the Alertmanager binary (default: Debian's prometheus-alertmanager)")
    parser.add_argument("--validate-requests", type=positive(int), default=40, help="requests the gate sends (default: 40)")
