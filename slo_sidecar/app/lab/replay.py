"""Replay synthetic counter and gauge histories through a real Prometheus and report when each alert fired.

Why a real one: when an alert fires after errors begin, and how long it lingers once they stop, follows
from PromQL's extrapolation and lookback and from the chain of recording rules the alert reads; a model
written by hand would only restate our assumptions. So the histories are backfilled into a TSDB
(promtool, from OpenMetrics), the recording rules are backfilled level by level by promtool against a
Prometheus serving that TSDB (one backfill cannot read what its own rules record), and each alert's
expression is evaluated by Prometheus's query_range every step, with `for:` applied as its rule engine does.

Where this differs from a live Prometheus:
- Backfilled data carries no staleness markers, so a series that stops (a target down, a recording that
  no longer matches) would stay visible for the whole lookback (5m by default). The lookback here is the
  longest of the scrape and evaluation intervals instead, so a series vanishes at most that long after a
  live Prometheus would have marked it stale (a raw series up to one step late, a recorded one on time),
  plus one second: promtool's rule backfill ends each 2-hour block on a whole second and skips an
  evaluation that falls in its last second, and the second bridges that gap (without it, a group whose
  offset lands there loses a recording every 2 hours, and its alerts resolve and fire again).
- Alerts are evaluated at start, start + step, ...; a live group evaluates at an offset hashed from its
  name and file, so a live alert may start or end up to one step later or earlier.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from slo_sidecar.app.backfill import openmetrics_blocks, rule_blocks, rule_levels
from slo_sidecar.app.processes import ManagedProcess, free_port, get_json
from slo_sidecar.spec.model import duration_seconds

MAX_POINTS = 11_000  # query_range refuses more points per series
# Retention counts back from the newest block, not from now: old histories are kept, and 100y, Prometheus's
# ceiling, keeps any span.
RETENTION = "100y"

LabelSet = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Series:
    """One time series as its target exposed it, scrape by scrape; a gap in the samples is the target down."""

    name: str
    labels: dict[str, str]
    kind: str  # "counter" or "gauge"; the TSDB keeps no types, so the backfill declares every family `unknown`
    samples: list[tuple[float, float]]  # (unix time s, value), times ascending

    def __post_init__(self) -> None:
        if self.kind not in ("counter", "gauge"):
            raise ValueError(f"{self.name}: kind must be counter or gauge, not {self.kind!r}")
        times = [t for t, _ in self.samples]
        if any(later <= earlier for earlier, later in zip(times, times[1:])):
            # promtool would drop the out-of-order samples without a word
            raise ValueError(f"{self.name}{self.labels}: sample times must be strictly ascending")


@dataclass(frozen=True)
class Firing:
    """One interval during which an alert was FIRING for one label set."""

    alert: str
    labels: dict[str, str]  # the expression's output labels and the rule's static labels, without alertname
    start: float  # the first evaluation at which the expression had held for the rule's `for:`
    end: float | None  # the first evaluation at which it no longer held; None: still firing at the end


@dataclass(frozen=True)
class _Recording:
    file: str  # its rule file's name: each level's rules of one file go to one path, see _write_level
    group: str
    interval: str | None
    rule: dict


@dataclass(frozen=True)
class _Alert:
    name: str
    expr: str
    hold_s: int  # its `for:`
    labels: dict[str, str]


@dataclass(frozen=True)
class Replayed:
    firings: list[Firing]
    values: dict[tuple[str, float], list[dict]]  # (expr, time) asked for -> its instant vector's results


def replay(series: list[Series], rule_files: list[Path], start: float, end: float, workdir: Path,
           step_s: int = 60, scrape_interval_s: int = 15,
           instants: tuple[tuple[str, float], ...] = (), watch: tuple[tuple[str, str], ...] = (),
           lookback_s: int | None = None) -> Replayed:
    """Every FIRING interval, in [start, end], of every alerting rule in rule_files, as Prometheus's rule
    engine evaluating every step_s would have had it, the series scraped every scrape_interval_s.

    `instants` are (expr, time) pairs to evaluate over the replayed data (recorded series included); `watch`
    are (name, expr) pairs whose intervals of holding come back as firings of that name, as an alert with no
    `for:` would (a recording's state, not an alert).
    Every file goes under workdir (which must not hold a previous replay): the TSDB, the backfill input,
    the rule files of each level, and the logs of promtool and Prometheus.
    """
    workdir = Path(workdir).resolve()
    prometheus_dir = workdir / "prometheus"
    (prometheus_dir / "tsdb").mkdir(parents=True)
    recordings, alerts = _load_rules(rule_files)
    alerts += [_Alert(name, expr, 0, {}) for name, expr in watch]
    if lookback_s is None:
        read_instantly = [r for r in recordings if r.interval and _read_instantly(r.rule["record"], recordings, alerts)]
        lookback_s = max([step_s, scrape_interval_s, *(_seconds(r.interval) for r in read_instantly)]) + 1
    _backfill_series(series, workdir, prometheus_dir / "tsdb")
    data_start = min([start, *(s.samples[0][0] for s in series if s.samples)])
    for level, recordings_of_level in enumerate(_levels(recordings), 1):
        blocks = workdir / "rule-blocks" / f"level{level}"
        rule_paths = _write_level(recordings_of_level, workdir / "rules")
        with _prometheus(prometheus_dir, lookback_s, f"prometheus-level{level}.log") as url:
            # Relative paths: a group's evaluation offset hashes its file's path as given, so the same
            # replay evaluates at the same instants wherever its work directory is (its times reproduce).
            rule_blocks(url, [str(path.relative_to(workdir)) for path in rule_paths], data_start, end, step_s,
                        blocks, workdir / f"promtool-rules-level{level}.log", cwd=workdir)
        for block in blocks.iterdir():  # Prometheus reads new blocks at start-up: the next one sees these
            block.rename(prometheus_dir / "tsdb" / block.name)
    times = [start + k * step_s for k in range(int((end - start) // step_s) + 1)]
    with _prometheus(prometheus_dir, lookback_s, "prometheus-alerts.log") as url:
        firings = [firing for alert in alerts
                   for firing in _firings(alert, _held(url, alert, times, step_s), times)]
        values = {(expr, t): get_json(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': expr, 'time': t})}")
                  ["data"]["result"] for expr, t in instants}
    return Replayed(sorted(firings, key=lambda f: (f.start, f.alert, sorted(f.labels.items()))), values)


def _read_instantly(record: str, recordings: list[_Recording], alerts: list[_Alert]) -> bool:
    """Whether some rule reads `record` at an instant (the lookback finds it), not only over a range."""
    instant = re.compile(rf"(?<![\w:]){re.escape(record)}(?![\w:])(?!(\{{[^}}]*\}})?\s*\[)")
    return any(instant.search(expr) for expr in [*(r.rule["expr"] for r in recordings), *(a.expr for a in alerts)])


def _load_rules(rule_files: list[Path]) -> tuple[list[_Recording], list[_Alert]]:
    recordings: list[_Recording] = []
    alerts: list[_Alert] = []
    names = [Path(path).name for path in rule_files]
    if len(set(names)) < len(names):
        raise ValueError(f"rule files of the same name (each level's rules go to one file per name): {names}")
    for path in rule_files:
        for group in (yaml.safe_load(Path(path).read_text()) or {}).get("groups") or []:
            for rule in group.get("rules") or []:
                if "record" in rule:
                    recordings.append(_Recording(Path(path).name, group["name"], group.get("interval"), rule))
                else:
                    alerts.append(_alert(rule))
    return recordings, alerts


def _alert(rule: dict) -> _Alert:
    """The alerting rule, refused where the replay would silently differ from Prometheus."""
    labels = {name: str(value) for name, value in (rule.get("labels") or {}).items()}
    if "keep_firing_for" in rule or any("{{" in value for value in labels.values()):
        raise ValueError(f"{rule['alert']}: keep_firing_for and templated labels are not replayed")
    return _Alert(rule["alert"], rule["expr"], _seconds(rule.get("for", "0s")), labels)


def _seconds(duration: str) -> int:
    seconds = duration_seconds(str(duration))
    if seconds is None:
        raise ValueError(f"unsupported duration {duration!r}: one number and one unit of d, h, m or s")
    return seconds


def _levels(recordings: list[_Recording]) -> list[list[_Recording]]:
    """The recording rules in dependency levels (see rule_levels)."""
    by_rule = {id(recording.rule): recording for recording in recordings}
    return [[by_rule[id(rule)] for rule in level] for level in rule_levels([r.rule for r in recordings])]


def _write_level(recordings: list[_Recording], rules_dir: Path) -> list[Path]:
    """One level's rules as rule files, one per original file and at the same path at every level.

    promtool evaluates a group at instants offset by a hash of its name and file, so with the same name
    and path a group's rules of every level are evaluated at the same instants, and a rule reads what
    an earlier rule of its group recorded at that very instant, as it does in a live group. The path is the
    original file's name, so a rule file added to a spec leaves every other group's instants where they were
    (the module's docstring: a group whose offset falls in a step's last second loses the evaluation at
    each 2-hour block's end, which a replay shows as an alert that resolves and fires again).
    """
    files: dict[str, dict[str, dict]] = defaultdict(dict)
    for recording in recordings:
        group = files[recording.file].setdefault(recording.group, {"name": recording.group, "rules": []})
        if recording.interval:
            group["interval"] = recording.interval
        group["rules"].append(recording.rule)
    rules_dir.mkdir(exist_ok=True)
    paths = []
    for name, groups in sorted(files.items()):
        path = rules_dir / name
        path.write_text(yaml.safe_dump({"groups": list(groups.values())}, sort_keys=False))
        paths.append(path)
    return paths


def _backfill_series(series: list[Series], workdir: Path, data_dir: Path) -> None:
    """The series as TSDB blocks in data_dir."""
    path = workdir / "series.om"
    path.write_text(_openmetrics(series))
    times = [t for s in series for t, _ in s.samples]
    hours = max(2, math.ceil((max(times, default=0) - min(times, default=0)) / 3600))
    openmetrics_blocks(path, data_dir, workdir / "promtool-openmetrics.log", max_block_hours=hours)


def _openmetrics(series: list[Series]) -> str:
    """OpenMetrics text: each family's lines together, each series' samples in time order, timestamps in s."""
    lines = []
    for name in sorted({s.name for s in series}):
        lines.append(f"# TYPE {name} unknown")
        for one in (s for s in series if s.name == name):
            labels = ",".join(f'{label}="{_escape(value)}"' for label, value in sorted(one.labels.items()))
            head = f"{name}{{{labels}}}" if labels else name
            lines.extend(f"{head} {_number(value)} {float(t)!r}" for t, value in one.samples)
    return "\n".join([*lines, "# EOF"]) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


@contextmanager
def _prometheus(directory: Path, lookback_s: int, log_name: str) -> Iterator[str]:
    """The URL of a Prometheus serving directory/tsdb (no scrapes, no rules), for the duration of the block."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = directory / "prometheus.yml"
    config.write_text("scrape_configs: []\n")
    args = ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={directory / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}", f"--storage.tsdb.retention.time={RETENTION}",
            f"--query.lookback-delta={lookback_s}s"]
    with ManagedProcess("prometheus", args, directory / log_name, cwd=directory).start() as process:
        process.wait_http_ok(url + "/-/ready", timeout_s=120)
        yield url


def _held(url: str, alert: _Alert, times: list[float], step_s: int) -> dict[LabelSet, set[int]]:
    """For each of the alert's label sets, the indices of the evaluation times at which its expression
    returned that set; in query_range calls of at most MAX_POINTS steps."""
    held: dict[LabelSet, set[int]] = defaultdict(set)
    for first in range(0, len(times), MAX_POINTS):
        chunk = times[first:first + MAX_POINTS]
        query = urllib.parse.urlencode({"query": alert.expr, "start": chunk[0], "end": chunk[-1], "step": step_s})
        for result in get_json(f"{url}/api/v1/query_range?{query}")["data"]["result"]:
            output = {name: value for name, value in result["metric"].items() if name != "__name__"}
            labels = tuple(sorted({**output, **alert.labels}.items()))
            held[labels].update(first + round((float(t) - chunk[0]) / step_s) for t, _ in result["values"])
    return held


def _firings(alert: _Alert, held: dict[LabelSet, set[int]], times: list[float]) -> list[Firing]:
    """The FIRING intervals: pending from the first evaluation the expression holds, firing once it has
    held for `for:` (evaluation time - pending since >= for), over at the first evaluation it does not."""
    firings = []
    for labels, indices in held.items():
        pending_since: float | None = None
        firing_since: float | None = None
        for index, t in enumerate(times):
            if index not in indices:
                if firing_since is not None:
                    firings.append(Firing(alert.name, dict(labels), firing_since, t))
                pending_since = firing_since = None
                continue
            if pending_since is None:
                pending_since = t
            if firing_since is None and t - pending_since >= alert.hold_s:
                firing_since = t
        if firing_since is not None:
            firings.append(Firing(alert.name, dict(labels), firing_since, None))
    return firings
