"""Fleet scale: N synthetic pods (default 200, 5 services, 2 namespaces) with a real pod's /metrics, a day
of their SLI history backfilled, and one real Prometheus per rule set scraping them live: our generated
rules against Sloth's for the same SLOs, in one run. Reports rule-evaluation cost, samples and series,
the long windows' error against the exact form and the model's truth, and every dashboard panel
query's time.

    .venv/bin/python bench/fleet.py [--pods 200] [--history-h 24] [--live-s 300] [--fail svc-2=0.05] [--json FILE]
    .venv/bin/python bench/fleet.py --serve [--pods 200]     # the fleet alone, for your own Prometheus
    .venv/bin/python bench/fleet.py --capture                # the pod template again, from a real pod

The model and the expositions: bench/fleet_model.py. The pod template: tests/fixtures/fleet/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
from aiohttp import web  # noqa: E402

from slo_sidecar.alerts.dump import dump  # noqa: E402
from slo_sidecar.alerts.render import rule_groups  # noqa: E402
from bench.fleet_model import TEMPLATE_DIR, Fleet, Incident, PodTemplate, history, make_fleet, render, target_labels  # noqa: E402
from bench.sloth_rules import sloth_rule_groups  # noqa: E402
from slo_sidecar.app.backfill import openmetrics_blocks, rule_blocks, rule_levels  # noqa: E402
from slo_sidecar.app.processes import PrometheusProcess, get_json  # noqa: E402
from slo_sidecar.spec.load import DEFAULT_SPEC, load_spec  # noqa: E402
from slo_sidecar.spec.model import Spec, duration_seconds  # noqa: E402
from tests.helpers import metric, parse_metrics  # noqa: E402
from tests.threaded_server import ThreadedServer  # noqa: E402

BASE_WINDOW = "5m"


class FleetServer(ThreadedServer):
    """Every pod's engine and sidecar /metrics on one port: /pods/<name>/<engine|sidecar>."""

    def __init__(self, fleet: Fleet, template: PodTemplate):
        super().__init__()
        self.fleet, self.template = fleet, template
        self.pods = {pod.name: pod for pod in fleet.pods}

    def true_error_ratio(self, namespace: str, service: str, window_s: float, at_s: float) -> float:
        """The model's error ratio of a service over the window that ends at `at_s` (from its first data on)."""
        return self.fleet.true_error_ratio(namespace, service, max(self.fleet.epoch_s, at_s - window_s), at_s)

    def routes(self, app: web.Application) -> None:
        async def metrics(request: web.Request) -> web.Response:
            pod = self.pods.get(request.match_info["pod"])
            part = request.match_info["part"]
            if pod is None or part not in ("engine", "sidecar"):
                return web.json_response({"error": "no such pod or part"}, status=404)
            return web.Response(text=render(self.fleet, self.template, pod, part, time.time()),
                                content_type="text/plain", charset="utf-8")

        app.router.add_get("/pods/{pod}/{part}", metrics)

    def scrape_configs(self) -> list[dict]:
        """The fleet as Prometheus (or vmagent) targets: one per pod and part, with the labels Kubernetes
        discovery would give it (namespace, pod, instance)."""
        address = self.url.removeprefix("http://")
        return [{"job_name": part, "static_configs": [
            {"targets": [address], "labels": {"__metrics_path__": f"/pods/{pod.name}/{part}",
                                              **target_labels(pod, part)}} for pod in self.fleet.pods]}
            for part in ("engine", "sidecar")]


def write_openmetrics(path: Path, fleet: Fleet, template: PodTemplate, start_s: float, end_s: float,
                      step_s: float) -> int:
    """The SLI history as an OpenMetrics file for `promtool tsdb create-blocks-from openmetrics`; its lines."""
    count = 0
    with path.open("w") as out:
        for line in history(fleet, template, start_s, end_s, step_s):
            out.write(line + "\n")
            count += 1
        out.write("# EOF\n")
    return count


def history_blocks(workdir: Path, fleet: Fleet, template: PodTemplate, start_s: float, end_s: float,
                   step_s: float) -> tuple[Path, int]:
    """The raw SLI history as TSDB blocks (promtool); (their directory, the samples written)."""
    source, blocks = workdir / "history.om", workdir / "history-blocks"
    samples = write_openmetrics(source, fleet, template, start_s, end_s, step_s)
    openmetrics_blocks(source, blocks, workdir / "promtool-openmetrics.log")
    source.unlink()
    return blocks, samples


def add_blocks(blocks: Path, prometheus: PrometheusProcess, restart: bool = True) -> None:
    """Blocks into a running Prometheus: each copied into its data directory under a name it ignores, then
    renamed, whole, to its block id. Then either a restart loads them (seconds, but neither scrapes nor rules
    run meanwhile: a server with a large head takes a minute or more, a gap the long windows see), or its
    own reload, which looks for new blocks every minute (prometheus_tsdb_reloads_total counts them)."""
    reloads = _own_counter(prometheus, "prometheus_tsdb_reloads_total")
    for block in blocks.iterdir():
        staged = prometheus.tsdb / f"{block.name}.tmp-for-creation"
        shutil.copytree(block, staged)
        staged.rename(prometheus.tsdb / block.name)
    if restart:
        prometheus.restart()
        prometheus.wait_ready(300)
        return
    deadline = time.monotonic() + 300
    while _own_counter(prometheus, "prometheus_tsdb_reloads_total") < reloads + 2:  # one that began after the copy
        if time.monotonic() > deadline:
            raise TimeoutError(f"{prometheus.url} did not reload its blocks in 300 s")
        time.sleep(2)


def _own_counter(prometheus: PrometheusProcess, name: str) -> float:
    return metric(_own_metrics(prometheus), name)


def recording_blocks(prometheus: PrometheusProcess, rules: list[dict], start_s: float, end_s: float,
                     interval: str, workdir: Path, name: str) -> Path:
    """Recording rules' history, evaluated over what `prometheus` holds by `promtool tsdb create-blocks-from
    rules` (as if they had run all along): the blocks' directory. The rules must read only what the server
    already holds (promtool evaluates each against it)."""
    path, out = workdir / f"{name}.rules.yaml", workdir / name
    rule_file(path, [{"name": name, "rules": rules}])
    rule_blocks(prometheus.url, [str(path)], start_s, end_s, duration_seconds(interval), out,
                workdir / f"promtool-{name}.log")
    return out


def rule_file(path: Path, groups: list[dict]) -> Path:
    path.write_text(dump({"groups": groups}))
    return path


@dataclass
class RuleCost:
    """What one Prometheus spent on its rules over the measured minutes."""

    evaluation_s_per_min: float  # seconds of rule evaluation a minute (all groups, each at its interval)
    last_durations_s: dict[str, float]  # each group's last evaluation
    samples_per_eval: float  # samples the groups' last evaluations produced, summed
    recorded_series: int  # series of the rules' own records
    head_series: int


def _own_metrics(prometheus: PrometheusProcess) -> dict[tuple[str, frozenset], float]:
    """Prometheus's own /metrics, as the reference parser reads them."""
    return parse_metrics(urllib.request.urlopen(prometheus.url + "/metrics", timeout=30).read().decode())


EVALUATION_SECONDS = "prometheus_rule_group_duration_seconds_sum"  # spent evaluating rule groups since start


def evaluation_seconds(prometheus: PrometheusProcess) -> float:
    """Seconds Prometheus has spent evaluating rule groups since it started."""
    return _own_counter(prometheus, EVALUATION_SECONDS)


def rule_cost(prometheus: PrometheusProcess, spent_before_s: float, measured_s: float) -> RuleCost:
    own = _own_metrics(prometheus)
    durations = {dict(labels)["rule_group"].split(";")[-1]: value for (name, labels), value in own.items()
                 if name == "prometheus_rule_group_last_duration_seconds"}
    spent = metric(own, EVALUATION_SECONDS) - spent_before_s
    recorded = prometheus.query('count({__name__=~"slo:.+"})')
    return RuleCost(spent / measured_s * 60, durations, metric(own, "prometheus_rule_group_last_evaluation_samples"),
                    int(float(recorded[0]["value"][1])) if recorded else 0,
                    int(metric(own, "prometheus_tsdb_head_series")))


def backfill(servers: list[tuple[PrometheusProcess, list[dict]]], fleet: Fleet, template: PodTemplate,
             start_s: float, end_s: float, step_s: float, evaluation: str, workdir: Path, restart: bool = True) -> int:
    """The history behind running Prometheus servers that scrape the fleet and evaluate their rules live
    since `end_s` (each started with ADMIN_API): the raw SLI series from start to end, then each server's
    base recordings (its rules, in passes: a rule that reads another's record comes in the pass after it)
    from the start to when the history was in, as if fleet and rules had run all along. What the servers
    recorded live before they had the history (5m rates over a few live samples) is deleted first: the
    backfill's take its place. No gap: the live scrapes and rules take over where the history ends. The
    raw samples written."""
    blocks, samples = history_blocks(workdir, fleet, template, start_s, end_s, step_s)
    for prometheus, _ in servers:
        add_blocks(blocks, prometheus, restart)
    loaded = time.time()
    for index, (prometheus, rules) in enumerate(servers):
        for record in sorted({rule["record"] for rule in rules}):
            request = urllib.request.Request(prometheus.url + "/api/v1/admin/tsdb/delete_series?" + urllib.parse.urlencode(
                {"match[]": record, "start": f"{end_s - 1:.3f}", "end": f"{loaded:.3f}"}), method="POST")
            urllib.request.urlopen(request, timeout=60).read()
        for level, chosen in enumerate(rule_levels(rules)):
            name = f"recordings-{index}-{level}"
            add_blocks(recording_blocks(prometheus, chosen, start_s, loaded, evaluation, workdir, name), prometheus,
                       restart)
    return samples


ADMIN_API = ("--web.enable-admin-api",)  # backfill deletes what a server recorded before it had the history


def base_recordings(groups: list[dict], window: str = BASE_WINDOW) -> list[dict]:
    """The recording rules of the base window: what long windows (ours) or the period (Sloth's) sum."""
    return [rule for group in groups for rule in group["rules"]
            if "record" in rule and rule["labels"].get("sloth_window") == window]


def error_ratio_queries(spec: Spec, slo_name: str, window: str) -> tuple[str, str]:
    """(ours, exact) error ratio of an SLO over a window, per service: our recording, and the ratio of
    the raw counters' increases over the whole window (Sloth's form, and our old one)."""
    slo = next(s for s in spec.slos if s.name == slo_name)
    by = ", ".join(spec.identity)
    errors, total = (events.rate_promql(window, spec.identity) for events in (slo.sli.errors, slo.sli.total))
    return (f'slo:sli_error:ratio_rate{window}{{sloth_slo="{slo_name}"}}',
            f"sum by ({by}) ({errors}) / sum by ({by}) ({total})")


def accuracy(prometheus: PrometheusProcess, server: FleetServer, spec: Spec,
             windows: tuple[str, ...] = ("1d", "3d", "30d"), slo_name: str = "ttft") -> list[dict]:
    """Each service's error ratio over each long window: our newest recording, the exact form at that
    recording's own time, and the model's truth there (a 1-day ratio moves between evaluations)."""
    from slo_sidecar.spec.model import duration_seconds

    rows = []
    for window in windows:
        ours_q, exact_q = error_ratio_queries(spec, slo_name, window)
        newest = {(r["metric"]["namespace"], r["metric"]["model_name"]): r["values"][-1]
                  for r in _query(prometheus.url, f"{ours_q}[5m]")}
        for (namespace, service), (at, value) in sorted(newest.items()):
            exact = {(r["metric"]["namespace"], r["metric"]["model_name"]): float(r["value"][1])
                     for r in _query(prometheus.url, exact_q, float(at))}
            rows.append({"window": window, "namespace": namespace, "service": service, "at": float(at),
                         "truth": server.true_error_ratio(namespace, service, duration_seconds(window) or 0, float(at)),
                         "ours": float(value), "exact": exact.get((namespace, service))})
    return rows


def _query(url: str, expr: str, at_s: float | None = None) -> list[dict]:
    params = {"query": expr, **({"time": f"{at_s:.3f}"} if at_s is not None else {})}
    return get_json(url + "/api/v1/query?" + urllib.parse.urlencode(params))["data"]["result"]


def relative_error(value: float | None, truth: float) -> float:
    return float("inf") if value is None else abs(value - truth) / truth


def panel_costs(prometheus: PrometheusProcess, spec: Spec) -> list[tuple[str, str, float]]:
    """(dashboard, panel, seconds) for every panel query of every dashboard, as Grafana would ask it: an
    instant query, or a range query over the default hour at a 15 s step."""
    from slo_sidecar.dashboards.definitions import all_panel_queries

    costs = []
    end = time.time()
    for query in all_panel_queries(spec):
        params = {"query": query.expr} if query.instant else {
            "query": query.expr, "start": f"{end - 3600:.0f}", "end": f"{end:.0f}", "step": "15"}
        path = "/api/v1/query?" if query.instant else "/api/v1/query_range?"
        started = time.perf_counter()
        get_json(prometheus.url + path + urllib.parse.urlencode(params))
        costs.append((query.dashboard, query.panel, time.perf_counter() - started))
    return costs


def our_groups(spec: Spec) -> list[dict]:
    """The request-counting SLOs' rule groups: the fleet's pods serve requests; a time-slice SLO (GPU minutes)
    reads a gauge the fleet does not simulate."""
    sliced = {f"slo-{slo.name}.rules.yaml" for slo in spec.slos if slo.sli.timeslices is not None}
    return [group for name, groups in rule_groups(spec).items() if name.startswith("slo-") and name not in sliced
            for group in groups]


def default_incidents(now_s: float) -> list[Incident]:
    """svc-1 fails 2% of its requests from 3 h ago on (a page); svc-3 failed 0.4% for 6 h yesterday."""
    return [Incident("svc-1", now_s - 3 * 3600, now_s + 86400, 0.02),
            Incident("svc-3", now_s - 20 * 3600, now_s - 14 * 3600, 0.004)]


def parse_incident(text: str, now_s: float) -> Incident:
    """SERVICE=RATIO[@HOURS_AGO[-HOURS_AGO]]: svc-2=0.05 fails 5% from now on; svc-2=0.05@3-1 did from 3 h
    ago to 1 h ago."""
    try:
        service, rest = text.split("=", 1)
        ratio, _, when = rest.partition("@")
        began, _, ended = when.partition("-")
        start = now_s - float(began) * 3600 if began else now_s
        end = now_s - float(ended) * 3600 if ended else now_s + 86400 * 365
        incident = Incident(service, start, end, float(ratio))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SERVICE=RATIO[@HOURS_AGO[-HOURS_AGO]], got {text!r}")
    if not 0 <= incident.error_ratio <= 1 or incident.end_s <= incident.start_s:
        raise argparse.ArgumentTypeError(f"a ratio in 0-1 over a time span that ends after it starts, got {text!r}")
    return incident


def capture(directory: Path, requests: int = 20) -> tuple[int, int]:
    """The pod template, from a real pod: an engine traced as the deployment's is (OTLP to a collector that
    is not there: spans are dropped and counted, as they would be), after `requests` completions, and a
    sidecar beside it with 8 fake GPUs after a few scrapes. Returns the series each serves."""
    from slo_sidecar.app.processes import EngineProcess, SidecarProcess, free_port
    from tests.helpers import post_json

    workdir = Path(tempfile.mkdtemp(prefix="slo-sidecar-capture-"))
    env = {"OTEL_SERVICE_NAME": "llm-inference", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
           "POD_NAME": "engine-pod-0", "POD_NAMESPACE": "inference"}
    try:
        with EngineProcess(workdir / "engine.log", "--max-model-len", "512", env=env).start() as engine:
            engine.wait_ready()
            for _ in range(requests):
                post_json(engine.url + "/v1/completions", {"prompt": "hello", "max_tokens": 8})
            with SidecarProcess(workdir / "sidecar.log", engine.url, "--engine-interval-s", "1", "--fake-gpu", "8",
                                "--gpu-hourly-usd", "4").start() as sidecar:
                sidecar.wait_ready()
                time.sleep(6)  # rates, cost and every window's series exist after a few scrapes
                texts = {part: urllib.request.urlopen(url + "/metrics", timeout=30).read()
                         for part, url in (("engine", engine.url), ("sidecar", sidecar.url))}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for part, text in texts.items():
        (directory / f"{part}.prom").write_bytes(text)
    return PodTemplate.load(directory).series()


def serve(pods: int, services: int, namespaces: int, incidents: list[Incident]) -> None:
    """The fleet alone, until interrupted: point your own Prometheus (or vmagent) at it."""
    fleet = make_fleet(pods, services, namespaces, epoch_s=time.time(), incidents=incidents)
    server = FleetServer(fleet, PodTemplate.load()).start()
    print(f"serving {pods} pods at {server.url}/pods/<pod>/<engine|sidecar>; scrape configs:")
    print(yaml.safe_dump({"scrape_configs": server.scrape_configs()}, sort_keys=False)[:2000] + "...")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


def run(pods: int, services: int, namespaces: int, history_h: float, live_s: float, step_s: float,
        scrape: str, evaluation: str, workdir: Path, incidents: list[Incident] | None = None, log=print) -> dict:
    if live_s < 60:
        raise ValueError("live_s: at least 60 s, so that every group has run after the backfill")
    spec = load_spec(str(DEFAULT_SPEC))
    template = PodTemplate.load()
    now = time.time()
    start = now - history_h * 3600
    fleet = make_fleet(pods, services, namespaces, epoch_s=start,
                       incidents=default_incidents(now) if incidents is None else incidents)
    engine_series, sidecar_series = template.series()
    log(f"fleet: {pods} pods, {services} services, {namespaces} namespaces; {engine_series} + {sidecar_series} "
        f"series a pod ({pods * (engine_series + sidecar_series)} in all)")
    with ExitStack() as stack:
        server = FleetServer(fleet, template).start()
        stack.callback(server.stop)
        servers: dict[str, tuple[PrometheusProcess, list[dict]]] = {}
        live_since = time.time()  # the history ends here: the servers scrape and evaluate from now on
        for name, groups in (("ours", our_groups(spec)), ("sloth", sloth_rule_groups(spec))):
            home = workdir / name
            home.mkdir()
            prometheus = stack.enter_context(PrometheusProcess(
                home, {}, [rule_file(home / "rules.yaml", groups)], scrape_interval=scrape,
                evaluation_interval=evaluation, scrape_configs=server.scrape_configs(), retention="60d",
                extra_args=ADMIN_API).start())
            prometheus.wait_ready(300)
            servers[name] = (prometheus, base_recordings(groups))
        began = time.monotonic()
        samples = backfill(list(servers.values()), fleet, template, start, live_since, step_s, evaluation, workdir,
                           restart=False)  # 200 pods' heads take minutes to replay: no gaps in the recordings
        log(f"history: {history_h:g} h of the SLI series ({samples} samples) and each rule set's 5m recordings "
            f"over it, backfilled behind the live servers in {time.monotonic() - began:.0f} s")
        log(f"measuring: both Prometheus servers scrape the fleet and evaluate their rules for {live_s:g} s")
        spent = {name: evaluation_seconds(prometheus) for name, (prometheus, _) in servers.items()}
        measured_from = time.monotonic()
        time.sleep(live_s)
        measured = time.monotonic() - measured_from
        costs = {name: rule_cost(prometheus, spent[name], measured) for name, (prometheus, _) in servers.items()}
        ours = servers["ours"][0]
        rows = accuracy(ours, server, spec)
        panels = panel_costs(ours, spec)
    return {"pods": pods, "services": services, "namespaces": namespaces,
            "series_per_pod": engine_series + sidecar_series, "history_h": history_h, "measured_s": measured,
            "step_s": step_s, "scrape": scrape, "evaluation": evaluation, "raw_history_samples": samples,
            "cost": {name: cost.__dict__ for name, cost in costs.items()},
            "accuracy": rows, "panels": panels}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=200)
    parser.add_argument("--services", type=int, default=5)
    parser.add_argument("--namespaces", type=int, default=2)
    parser.add_argument("--history-h", type=float, default=24.0)
    parser.add_argument("--live-s", type=float, default=300.0)
    parser.add_argument("--step-s", type=float, default=30.0, help="the history's sample spacing")
    parser.add_argument("--scrape", default="15s")
    parser.add_argument("--evaluation", default="30s")
    parser.add_argument("--json", help="write the report here too")
    now = time.time()
    parser.add_argument("--fail", action="append", metavar="SERVICE=RATIO[@HOURS_AGO[-HOURS_AGO]]",
                        type=lambda text: parse_incident(text, now),
                        help="a service's failures (repeatable; default: svc-1=0.02@3, svc-3=0.004@20-14)")
    parser.add_argument("--serve", action="store_true", help="only serve the fleet, until interrupted")
    parser.add_argument("--capture", action="store_true", help="capture the pod template again from a real "
                        "engine and sidecar (tests/fixtures/fleet/), then stop")
    args = parser.parse_args()
    if args.capture:
        engine, sidecar = capture(TEMPLATE_DIR)
        print(f"captured {TEMPLATE_DIR}: {engine} engine and {sidecar} sidecar series")
        return 0
    if args.serve:
        serve(args.pods, args.services, args.namespaces, args.fail or [])
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="slo-sidecar-fleet-"))
    try:
        report = run(args.pods, args.services, args.namespaces, args.history_h, args.live_s, args.step_s,
                     args.scrape, args.evaluation, workdir, args.fail)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    ours, sloth = report["cost"]["ours"], report["cost"]["sloth"]
    print(f"\n{'':22} {'ours':>12} {'Sloth':>12} {'ours/Sloth':>10}")
    for cost in (ours, sloth):
        cost["last_durations_sum_s"] = sum(cost["last_durations_s"].values())
    for key, label in (("evaluation_s_per_min", "eval s per minute"),
                       ("last_durations_sum_s", "groups' last evals, s"), ("samples_per_eval", "samples per eval"),
                       ("recorded_series", "recorded series"), ("head_series", "head series")):
        print(f"{label:22} {ours[key]:>12.4g} {sloth[key]:>12.4g} {ours[key] / sloth[key]:>10.2f}")
    worst = max(report["accuracy"], key=lambda r: relative_error(r["ours"], r["truth"]))
    print(f"long windows: max error ours vs truth {relative_error(worst['ours'], worst['truth']):.3%} "
          f"({worst['window']}, {worst['service']}); ours vs exact "
          f"{max(relative_error(r['ours'], r['exact']) for r in report['accuracy'] if r['exact']):.3%}")
    slowest = max(report["panels"], key=lambda p: p[2])
    print(f"panels: {len(report['panels'])} queries, slowest {slowest[2]:.3f} s ({slowest[0]}: {slowest[1]})")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
