"""The same rules on VictoriaMetrics: one small fleet (bench/fleet_model.py) with a day of SLI history, watched at
once by a real Prometheus and by VictoriaMetrics + vmagent + vmalert, each with our generated SLO rules unchanged
and a real Alertmanager; both stacks must give the same SLO values, the model's, and fire the same alerts.

Both start scraping the fleet, and Prometheus evaluating, where the history ends; Prometheus gets the history
behind it as promtool backfills it (bench/fleet.py's backfill: the raw SLI series and our 5m base-window recordings
over them, each loaded by a restart); VictoriaMetrics gets the same raw history through its import API and the same
base recordings, read out of that Prometheus sample by sample. Then both scrape the fleet live, every 5 s, and
evaluate every 5 s: the long windows (1d, 30d) sum the backfilled and the live recordings alike.

Known differences, none of which the comparisons depend on: vmalert adds an `alertgroup` label to its alerts;
MetricsQL's rate() does not extrapolate as PromQL's does (the counters here are linear, so both are exact away from
an incident's edges, and values are compared within 1%); vmalert aligns each query's time down to its group's
interval (the recorded sample carries that time, and the expected value is the model's at the sample's time).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import shutil
import time
import urllib.parse

import pytest

from bench.fleet import ADMIN_API, FleetServer, backfill, base_recordings, our_groups, rule_file
from bench.fleet_model import Incident, PodTemplate, history, make_fleet
from slo_sidecar.app.processes import AlertmanagerProcess, PrometheusProcess, get_json
from tests.victoria import VictoriaMetricsProcess, VmagentProcess, VmalertProcess
from slo_sidecar.spec.load import DEFAULT_SPEC, load_spec
from tests.helpers import REPO

TOOLS = ("prometheus", "promtool", "prometheus-alertmanager", "victoria-metrics", "vmagent", "vmalert")
pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in TOOLS),
    reason="needs prometheus and promtool (Debian package prometheus), prometheus-alertmanager, and victoria-metrics,"
           " vmagent and vmalert (Debian package victoria-metrics); scripts/setup.sh installs them")

ALERTMANAGER_CONFIG = REPO / "generated" / "alerts" / "alertmanager" / "alertmanager.yaml"
HISTORY_S = 25 * 3600  # the 1d windows covered, and the 30d window's history longer than a day
STEP_S = 120.0  # the raw history's sample spacing: coarse, so the backfill and the import stay small
INTERVAL = "5s"  # scrapes and rule evaluations, live; the base recordings are backfilled at it too
INTERVAL_S = 5.0
SLO = "availability"
PAGED = ("ns-1", "svc-1")  # 2% of its requests failing for the last 3 h, and on: a 20x burn, a page
RECOVERED = ("ns-1", "svc-3")  # 0.4% for 6 h, from 20 h to 14 h ago: long over
WINDOWS = {"5m": 300, "1h": 3600, "1d": 86400, "30d": 30 * 86400}
BASE_RECORDINGS = '{__name__=~"slo:sli_(error|total)_events:rate5m|slo:sli_total_events:timestamp"}'
TOLERANCE = 0.01


def incidents(now: float) -> list[Incident]:
    """A page's incident three hours old: the 1d window's ratio is still climbing, which is where a window
    summed from recorded 5m rates is most wrong without the edge correction of slo_sidecar.alerts.rules.long_rules
    (each 5m rate averages the 5 minutes before it: uncorrected, the window runs ~150 s behind the exact
    one, 1.1% off the 1d ratio here)."""
    return [Incident(PAGED[1], now - 3 * 3600, now + 86400, 0.02),
            Incident(RECOVERED[1], now - 20 * 3600, now - 14 * 3600, 0.004)]


def series_samples(url: str, expr: str, at: float | None = None) -> list[tuple[dict, list[tuple[float, str]]]]:
    """A range selector's raw samples, (labels, [(seconds, value)]) per series (Prometheus and VictoriaMetrics
    answer it alike)."""
    params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
    result = get_json(url + "/api/v1/query?" + urllib.parse.urlencode(params))["data"]["result"]
    return [(series["metric"], [(float(t), v) for t, v in series["values"]]) for series in result]


def instant(url: str, expr: str, at: float) -> dict[tuple[str, str], float]:
    params = {"query": expr, "time": f"{at:.3f}"}
    result = get_json(url + "/api/v1/query?" + urllib.parse.urlencode(params))["data"]["result"]
    return {(r["metric"]["namespace"], r["metric"]["model_name"]): float(r["value"][1]) for r in result}


def _escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def exposition_line(labels: dict[str, str], value: str, seconds: float) -> str:
    """A sample for /api/v1/import/prometheus: `name{labels} value milliseconds`."""
    pairs = ",".join(f'{key}="{_escaped(text)}"' for key, text in labels.items() if key != "__name__")
    return f"{labels['__name__']}{{{pairs}}} {value} {round(seconds * 1000)}"


def import_in_chunks(vm: VictoriaMetricsProcess, lines, chunk: int = 100_000) -> int:
    batch, count = [], 0
    for line in lines:
        batch.append(line)
        if len(batch) == chunk:
            vm.import_prometheus("\n".join(batch) + "\n")
            count, batch = count + len(batch), []
    if batch:
        vm.import_prometheus("\n".join(batch) + "\n")
        count += len(batch)
    return count


def copy_recordings(prometheus_url: str, vm: VictoriaMetricsProcess, start: float, end: float,
                    chunk_s: int = 7200) -> int:
    """Every sample of the base recordings Prometheus holds from start to end (the backfilled ones, and its live
    ones so far), with its labels and timestamp, into VictoriaMetrics; the samples copied. Read as raw samples
    (range selectors, chunk by chunk, each sample once), not resampled on a query_range grid."""
    count, low = 0, start - 1
    while low < end:
        high = min(low + chunk_s, end)
        lines = [exposition_line(labels, value, t)
                 for labels, values in series_samples(prometheus_url, f"{BASE_RECORDINGS}[{chunk_s}s]", high)
                 for t, value in values if low < t <= high]
        count += import_in_chunks(vm, lines)
        low = high
    return count


def latest(url: str, metric: str) -> dict[tuple[str, str], tuple[float, float]]:
    """(time, value) of each service's newest sample of the availability SLO's `metric`, from the last 10 minutes."""
    return {(labels["namespace"], labels["model_name"]): (values[-1][0], float(values[-1][1]))
            for labels, values in series_samples(url, f'{metric}{{sloth_slo="{SLO}"}}[10m]')}


def alert_key(labels: dict[str, str]) -> tuple[str, str, str, str]:
    return (labels.get("alertname", ""), labels.get("namespace", ""), labels.get("model_name", ""),
            labels.get("tier", ""))


def states(alerts: list[dict]) -> dict[str, set[tuple[str, str, str, str]]]:
    out: dict[str, set] = {"firing": set(), "pending": set()}
    for alert in alerts:
        out.setdefault(alert["state"], set()).add(alert_key(alert["labels"]))
    return out


def page_of(namespace: str, service: str) -> tuple[str, str, str, str]:
    return ("AvailabilitySLO", namespace, service, "page")


def relative(value: float, expected: float) -> float:
    return abs(value - expected) / abs(expected)


def test_the_same_rules_on_prometheus_and_victoria_metrics(tmp_path):
    began = time.monotonic()
    timings: dict[str, float] = {}
    spec = load_spec(str(DEFAULT_SPEC))
    template = PodTemplate.load()
    now = time.time()
    start = now - HISTORY_S
    # Every counter is 0 at the history's first sample: the 30d window's truth starts where its data does.
    fleet = make_fleet(pods=10, services=5, namespaces=2, epoch_s=start, incidents=incidents(now))
    services = fleet.services()
    assert PAGED in services and RECOVERED in services
    groups = our_groups(spec)
    dirs = {name: tmp_path / name for name in ("backfill", "prometheus", "vm", "vmagent", "vmalert", "am-p", "am-vm")}
    for path in dirs.values():
        path.mkdir()
    rules = rule_file(tmp_path / "rules.yaml", groups)

    with contextlib.ExitStack() as stack:
        server = FleetServer(fleet, template).start()
        stack.callback(server.stop)
        vm = stack.enter_context(VictoriaMetricsProcess(dirs["vm"], retention="60d").start())
        am_p = stack.enter_context(AlertmanagerProcess(dirs["am-p"], ALERTMANAGER_CONFIG).start())
        am_vm = stack.enter_context(AlertmanagerProcess(dirs["am-vm"], ALERTMANAGER_CONFIG).start())
        vm.wait_ready()

        # Both stacks scrape the fleet, and Prometheus evaluates the rules, from here on; the history ends here.
        live_since = time.time()
        prometheus = stack.enter_context(PrometheusProcess(
            dirs["prometheus"], {}, [rules], scrape_interval=INTERVAL, evaluation_interval=INTERVAL,
            alertmanager_url=am_p.url, scrape_configs=server.scrape_configs(), retention="60d",
            extra_args=ADMIN_API).start())
        vmagent = stack.enter_context(VmagentProcess(
            dirs["vmagent"], vm.write_url,
            {"global": {"scrape_interval": INTERVAL}, "scrape_configs": server.scrape_configs()}).start())
        prometheus.wait_ready(120)
        am_p.wait_ready()
        am_vm.wait_ready()
        vmagent.wait_ready()

        # The raw history into VictoriaMetrics on a thread, while promtool backfills it, and the base recordings
        # over it, behind the running Prometheus.
        pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(1))
        raw_import = pool.submit(lambda: import_in_chunks(
            vm, history(fleet, template, start, live_since, STEP_S, timestamp_scale=1000)))
        raw_samples = backfill([(prometheus, base_recordings(groups))], fleet, template, start, live_since, STEP_S,
                               INTERVAL, dirs["backfill"])
        timings["backfill"] = time.monotonic() - began
        assert raw_import.result() == raw_samples, "VictoriaMetrics got the history promtool backfilled"
        timings["raw imported"] = time.monotonic() - began

        # The base recordings, as Prometheus holds them (backfilled, and its live ones so far), into VictoriaMetrics.
        copied = copy_recordings(prometheus.url, vm, start, time.time())
        rate_series = len(series_samples(vm.url, f'slo:sli_total_events:rate5m{{sloth_slo="{SLO}"}}[1h]', now))
        assert rate_series == len(services), "a base recording per service, imported"
        timings["recordings copied"] = time.monotonic() - began
        vmalert = stack.enter_context(VmalertProcess(
            dirs["vmalert"], [rules], datasource_url=vm.url, remote_write_url=vm.url, remote_read_url=vm.url,
            notifier_url=am_vm.url, evaluation_interval=INTERVAL).start())
        vmalert.wait_ready()
        processes = (prometheus, vm, vmagent, vmalert, am_p, am_vm)

        # Both have run the long-window groups, and the page has had its minute: poll.
        page = page_of(*PAGED)

        def received(alertmanager: AlertmanagerProcess) -> bool:
            return any(alert_key(a["labels"]) == page for a in alertmanager.alerts())

        def ready() -> bool:
            vm.force_flush()
            return bool(latest(prometheus.url, "slo:sli_error:ratio_rate1d")
                        and latest(prometheus.url, "slo:sli_error:ratio_rate30d")
                        and latest(vm.url, "slo:sli_error:ratio_rate1d")
                        and latest(vm.url, "slo:sli_error:ratio_rate30d")
                        and page in states(get_json(prometheus.url + "/api/v1/alerts")["data"]["alerts"])["firing"]
                        and page in states(vmalert.alerts())["firing"]
                        and received(am_p) and received(am_vm))

        deadline = time.monotonic() + 270
        while not ready():
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {p.name}\n{p.log_tail(15)}" for p in processes)
                pytest.fail(f"not evaluated, or no page, within 270 s of vmalert's start\n{tails}")
            time.sleep(2)
        timings["evaluated"] = time.monotonic() - began

        # --- alert states ---------------------------------------------------------------------------------
        # The model's: only the paged service's availability page fires (14.4x over 1h and 5m: 2% is 20x); its
        # ticket (1x over 3d and 6h: 2.8x and 10x; not 3x over 1d, at 2.9x) waits out its `for: 10m`, pending.
        ticket = ("AvailabilitySLO", *PAGED, "ticket")

        def alert_states() -> tuple[dict, dict]:
            return (states(get_json(prometheus.url + "/api/v1/alerts")["data"]["alerts"]), states(vmalert.alerts()))

        p_alerts, v_alerts = alert_states()
        settle = time.monotonic() + 6 * INTERVAL_S
        while p_alerts != v_alerts and time.monotonic() < settle:
            time.sleep(1)
            p_alerts, v_alerts = alert_states()
        report = {"prometheus alerts": p_alerts, "vmalert alerts": v_alerts,
                  "alertmanager (prometheus)": [a["labels"] for a in am_p.alerts()],
                  "alertmanager (vmalert)": [a["labels"] for a in am_vm.alerts()]}
        assert p_alerts["firing"] == v_alerts["firing"] == {page}, report
        assert ticket in p_alerts["pending"] and ticket in v_alerts["pending"], report
        healthy = [s for s in services if s != PAGED]
        for side in (p_alerts, v_alerts):
            for state in side.values():
                assert not [key for key in state if key[1:3] in healthy], ("an alert of a healthy service", report)

        # Every rule of ours evaluates without error on both (a group not yet run is "unknown" on Prometheus).
        for group in prometheus.rule_groups():
            for rule in group["rules"]:
                assert rule["health"] != "err" and not rule.get("lastError"), (group["name"], rule)
        for group in vmalert.rule_groups():
            for rule in group["rules"]:
                assert not rule.get("lastError"), (group["name"], rule)

        # --- SLO values -----------------------------------------------------------------------------------
        # What each recorded, newest sample, against the model's exact ratio over the window at that sample's
        # time, and the two stacks' against each other.
        vm.force_flush()
        measured: dict[str, dict] = {}
        for window, seconds in WINDOWS.items():
            metric = f"slo:sli_error:ratio_rate{window}"
            ours = {"prometheus": latest(prometheus.url, metric), "vm": latest(vm.url, metric)}
            rows = measured.setdefault(window, {})
            for service in services:
                row = rows.setdefault(service, {})
                for side, recorded in ours.items():
                    assert service in recorded, (side, metric, service)
                    t, value = recorded[service]
                    truth = server.true_error_ratio(*service, seconds, t)
                    row[side] = (t, value, truth, relative(value, truth))
                row["prometheus vs vm"] = relative(row["vm"][1], row["prometheus"][1])

        # The same rule expressions, both engines, the same instant (every recording written by then).
        at = time.time() - 20
        same_instant: dict[str, float] = {}
        for window in WINDOWS:
            expr = next(rule["expr"] for group in groups for rule in group["rules"]
                        if rule.get("record") == f"slo:sli_error:ratio_rate{window}"
                        and rule["labels"]["sloth_slo"] == SLO)
            p_values, v_values = instant(prometheus.url, expr, at), instant(vm.url, expr, at)
            assert set(p_values) == set(v_values) == set(services), (window, p_values, v_values)
            same_instant[window] = max(relative(v_values[s], p_values[s]) for s in services)

        # The event rate over 1d (avg_over_time times the coverage from timestamp(), clamp_max, ignoring):
        # the service's requests a second, from the model.
        rate_1d = {"prometheus": latest(prometheus.url, "slo:sli_total_events:rate1d"),
                   "vm": latest(vm.url, "slo:sli_total_events:rate1d")}
        total_rps = {s: sum(p.rate_rps for p in fleet.pods if (p.namespace, p.service) == s) for s in services}
        rate_1d_error = {side: max(relative(values[s][1], total_rps[s]) for s in services)
                         for side, values in rate_1d.items()}

        timings["asserted"] = time.monotonic() - began
        print(f"\ntimings (s from start): {timings}; raw samples {raw_samples}, recordings copied {copied}")
        for window, rows in measured.items():
            worst = {side: max(row[side][3] for row in rows.values()) for side in ("prometheus", "vm")}
            print(f"{window}: max vs truth P {worst['prometheus']:.4%} VM {worst['vm']:.4%}; "
                  f"P vs VM recorded {max(r['prometheus vs vm'] for r in rows.values()):.4%}, "
                  f"same instant {same_instant[window]:.4%}")
            for service, row in rows.items():
                print(f"   {service}: P {row['prometheus'][1]:.6g} @{row['prometheus'][0] - now:+.0f}s, "
                      f"VM {row['vm'][1]:.6g} @{row['vm'][0] - now:+.0f}s, truth P {row['prometheus'][2]:.6g}")
        print(f"total rate 1d vs model: {rate_1d_error}")
        print(f"alerts: {report}")

        for window, rows in measured.items():
            for service, row in rows.items():
                for side in ("prometheus", "vm"):
                    assert row[side][3] < TOLERANCE, (window, service, side, row)
                assert row["prometheus vs vm"] < TOLERANCE, (window, service, row)
            assert same_instant[window] < TOLERANCE, (window, same_instant)
        assert max(rate_1d_error.values()) < TOLERANCE, rate_1d_error

        for process in (vmalert, vmagent, prometheus, am_p, am_vm, vm):
            status = process.stop()
            # Debian's vmalert 1.79 can panic on SIGTERM when a group's evaluation pushes to its remote-write
            # client after the client closed ("send on closed channel" in remotewrite.(*Client).Push): an
            # upstream race in its shutdown, seen on a loaded 2-core runner; nothing of ours. Any other exit
            # but 0 fails.
            upstream_race = (process is vmalert and status == 2
                             and "panic: send on closed channel" in process.log_tail(60)
                             and "remotewrite.(*Client).Push" in process.log_tail(60))
            assert status == 0 or upstream_race, process.log_tail()
    print(f"wall: {time.monotonic() - began:.0f} s")
