"""VictoriaMetrics, vmagent and vmalert as child processes, for the tests that run our rules and scrape
configuration on them unchanged (ManagedProcess: own process group, stopped whole, never leaked)."""

from __future__ import annotations

import urllib.parse
import urllib.request
from pathlib import Path

from slo_sidecar.app.processes import ManagedProcess, free_port, get_json, http_get

class VictoriaMetricsProcess(ManagedProcess):
    """A real single-node VictoriaMetrics (Debian's /usr/bin/victoria-metrics, package `victoria-metrics`) on a
    free port, with a throw-away storage directory in `workdir`; never the system service.

    Tuned for tests: what was just written is visible to the next query (no 30 s hiding of the newest
    samples, no response cache that backfilled history could go stale against).
    """

    def __init__(self, workdir: Path, binary: str = "victoria-metrics", retention: str = "1d",
                 extra_args: tuple[str, ...] = ()):
        """`retention` bounds what may be imported too: samples older than it are dropped on ingestion."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.write_url = self.url + "/api/v1/write"  # Prometheus remote write, for vmagent
        workdir = Path(workdir)
        super().__init__("victoria-metrics", [
            binary, f"-storageDataPath={workdir / 'victoria-metrics-data'}",
            f"-httpListenAddr=127.0.0.1:{self.port}", f"-retentionPeriod={retention}",
            # Queries at "now" are moved back by this offset (default 30s) to hide samples still in
            # flight; at 0 a rule evaluated every second sees the last scrape, as on Prometheus.
            "-search.latencyOffset=0s",
            # No rollup-result cache: a cached answer for a past range would not see samples
            # imported into that range afterwards (the documented setting for backfilling).
            "-search.disableCache",
            *extra_args,
        ], workdir / "victoria-metrics.log")

    def wait_ready(self, timeout_s: float = 60.0) -> float:
        return self.wait_http_ok(self.url + "/health", timeout_s)

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """The instant vector for expr (MetricsQL, a superset of PromQL), now or `at` (Unix seconds), as its
        Prometheus-compatible HTTP API returns it."""
        params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        return get_json(self.url + "/api/v1/query?" + urllib.parse.urlencode(params))["data"]["result"]

    def import_prometheus(self, text: str) -> None:
        """Backfill: exposition lines, each with its timestamp in milliseconds (`name{labels} value ts`), to
        /api/v1/import/prometheus; searchable when this returns."""
        request = urllib.request.Request(self.url + "/api/v1/import/prometheus", data=text.encode(), method="POST",
                                         headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=30) as response:
            if response.status not in (200, 204):
                raise RuntimeError(f"/api/v1/import/prometheus answered {response.status}")
        self.force_flush()

    def force_flush(self) -> None:
        """Make what it has received searchable now: samples are otherwise buffered for about a second, and a
        series new to it is found by queries only after about 10 s (1.79 flushes its index that often)."""
        status, body = http_get(self.url + "/internal/force_flush")
        if status != 200:
            raise RuntimeError(f"/internal/force_flush answered {status}: {body[:200]!r}")


class VmagentProcess(ManagedProcess):
    """A real vmagent (package `victoria-metrics`) on a free port: scrapes as `scrape_config` says (a Prometheus
    configuration: `global` and `scrape_configs`) and remote-writes everything to `remote_write_url` (a full
    URL, e.g. VictoriaMetricsProcess.write_url), buffering in a throw-away directory in `workdir`."""

    def __init__(self, workdir: Path, remote_write_url: str, scrape_config: dict, binary: str = "vmagent",
                 extra_args: tuple[str, ...] = ()):
        import yaml

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir = Path(workdir)
        (workdir / "vmagent.yml").write_text(yaml.safe_dump(scrape_config, sort_keys=False))
        super().__init__("vmagent", [
            binary, f"-promscrape.config={workdir / 'vmagent.yml'}", f"-remoteWrite.url={remote_write_url}",
            f"-remoteWrite.tmpDataPath={workdir / 'vmagent-remotewrite-data'}",
            f"-httpListenAddr=127.0.0.1:{self.port}", *extra_args,
        ], workdir / "vmagent.log")

    def wait_ready(self, timeout_s: float = 60.0) -> float:
        return self.wait_http_ok(self.url + "/health", timeout_s)

    def targets(self) -> list[dict]:
        """Its active targets, each with its health and last error, as Prometheus's /api/v1/targets gives them."""
        return get_json(self.url + "/api/v1/targets")["data"]["activeTargets"]


class VmalertProcess(ManagedProcess):
    """A real vmalert (package `victoria-metrics`) on a free port, evaluating `rule_files` (Prometheus rule files,
    unchanged) every `evaluation_interval` against `datasource_url`.

    The URLs are servers' base URLs (vmalert appends the API paths): recorded series and the ALERTS series go
    to `remote_write_url`, the alerts' state is restored at start from `remote_read_url`, alerts go to the
    Alertmanager at `notifier_url`. Recorded results are written back once per evaluation interval.
    """

    def __init__(self, workdir: Path, rule_files: list[Path], datasource_url: str, remote_write_url: str,
                 remote_read_url: str, notifier_url: str, evaluation_interval: str = "1s", binary: str = "vmalert",
                 extra_args: tuple[str, ...] = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir = Path(workdir)
        super().__init__("vmalert", [
            binary, *(f"-rule={path}" for path in rule_files), f"-datasource.url={datasource_url}",
            f"-remoteWrite.url={remote_write_url}", f"-remoteRead.url={remote_read_url}",
            f"-notifier.url={notifier_url}", f"-evaluationInterval={evaluation_interval}",
            f"-remoteWrite.flushInterval={evaluation_interval}",  # default 5s
            f"-httpListenAddr=127.0.0.1:{self.port}", *extra_args,
        ], workdir / "vmalert.log")

    def wait_ready(self, timeout_s: float = 60.0) -> float:
        return self.wait_http_ok(self.url + "/health", timeout_s)

    def rule_groups(self) -> list[dict]:
        """The rule groups it loaded, each with its rules, their health and last error."""
        return get_json(self.url + "/api/v1/rules")["data"]["groups"]

    def alerts(self) -> list[dict]:
        """Its active alerts (pending and firing), with labels, annotations and value."""
        return get_json(self.url + "/api/v1/alerts")["data"]["alerts"]
