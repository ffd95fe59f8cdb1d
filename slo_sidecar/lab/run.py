"""`slo-sidecar lab`: replay incidents into a real Prometheus with the generated rules, route what fires
through a real Alertmanager with the generated configuration, and print when each page and ticket
came against when the SRE Workbook's arithmetic says it must (scenarios.py, expect.py).

A row passes when every expected alert fired within its tolerance (two evaluation steps and two
scrapes, plus 3% for the extrapolation of rate()), and nothing else fired for that service.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from alerts.render import ALERTMANAGER_FILE, OPERATIONAL_FILE, render, rules_file
from slo_spec.model import Spec

from ..processes import AlertmanagerProcess
from .pods import Pod
from .replay import Firing, Replayed, replay
from .scenarios import DAYS, HOURS, Replay, Scenario, scenarios

BUDGET_CHECKS = ("slo:period_error_budget_remaining:ratio", "slo:current_burn_rate:ratio")


@dataclass
class Row:
    scenario: str
    expected: str  # the first page and ticket, in words
    expected_page_s: float | None
    expected_ticket_s: float | None
    page_s: float | None  # measured: first page after onset
    ticket_s: float | None
    page_alert: str = ""
    ticket_alert: str = ""
    false_fires: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # expected, not fired within tolerance
    notified: str = ""  # what Alertmanager would notify at the end (inhibited ones left out)
    why: str = ""

    @property
    def passed(self) -> bool:
        return not self.false_fires and not self.missing


def tolerance(replay_: Replay, expected_s: float) -> float:
    return 2 * replay_.step_s + 2 * replay_.scrape_s + 0.03 * expected_s


def belongs(labels: dict[str, str], namespace: str) -> bool:
    """An alert is a scenario's by its namespace, or by an instance of its pod (`<job>-<namespace>:<port>`)."""
    host = labels.get("instance", "").partition(":")[0]
    return labels.get("namespace") == namespace or host.partition("-")[2] == namespace


def judge(scenario: Scenario, firings: list[Firing], onset: float) -> Row:
    """The scenario's row: its alerts' first firings against the expected ones."""
    first: dict[tuple[str, str], float] = {}
    for firing in firings:
        if belongs(firing.labels, scenario.namespace):
            key = (firing.alert, firing.labels.get("tier", ""))
            first[key] = min(first.get(key, math.inf), firing.start - onset)
    row = Row(scenario.name, "", None, None, None, None, why=scenario.why)
    for key, after in sorted(first.items(), key=lambda item: item[1]):
        expected = scenario.expected.get(key)
        if expected is None or abs(after - expected) > tolerance(scenario.replay, expected):
            row.false_fires.append(f"{key[0]} ({key[1]}) at {readable(after)}"
                                   + (f", expected {readable(expected)}" if expected is not None else ""))
    for key, expected in scenario.expected.items():
        if key not in first:
            row.missing.append(f"{key[0]} ({key[1]}) expected at {readable(expected)}")
    for tier in ("page", "ticket"):
        want = min(((v, k[0]) for k, v in scenario.expected.items() if k[1] == tier), default=None)
        got = min(((v, k[0]) for k, v in first.items() if k[1] == tier), default=None)
        setattr(row, f"expected_{tier}_s", want[0] if want else None)
        setattr(row, f"{tier}_s", got[0] if got else None)
        setattr(row, f"{tier}_alert", got[1] if got else "")
    row.expected = ", ".join(f"{tier} {readable(getattr(row, f'expected_{tier}_s'))}"
                             for tier in ("page", "ticket")) if scenario.expected else "no alert"
    return row


def readable(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 600:
        return f"{seconds} s"
    if seconds < 3 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def run_replay(spec: Spec, replay_: Replay, chosen: list[Scenario], rules_dir: Path, workdir: Path
               ) -> tuple[list[Row], list[Firing], Replayed, float]:
    """One replay's scenarios, each a service of its own, in one Prometheus."""
    end = math.floor(time.time() / 3600) * 3600 - 3600
    onset = end - replay_.horizon_s
    start = onset - replay_.history_s
    series = [s for scenario in chosen
              for s in Pod(scenario.namespace, scenario.story).series(onset, start, end, replay_.scrape_s)]
    files = sorted(rules_dir.glob("*.rules.yaml")) if replay_.all_rules else [
        rules_dir / rules_file(next(slo for slo in spec.slos if slo.name == "availability")),
        rules_dir / OPERATIONAL_FILE]
    instants = tuple((f'{name}{{sloth_slo="availability", namespace="lab-healthy"}}', start + after)
                     for name in BUDGET_CHECKS for after in (60, 120)) if replay_.all_rules else ()
    replayed = replay(series, files, start, end, workdir / replay_.name, step_s=replay_.step_s,
                      scrape_interval_s=replay_.scrape_s, instants=instants)
    rows = [judge(scenario, replayed.firings, onset) for scenario in chosen]
    strays = [f for f in replayed.firings if not any(belongs(f.labels, s.namespace) for s in chosen)]
    if strays:  # an alert of no service (LLMSidecarAbsent, say) is a false fire of the whole replay
        row = Row(f"alerts of no service ({replay_.name} replay)", "no alert", None, None, None, None)
        row.false_fires = [f"{f.alert} {f.labels} at {readable(f.start - onset)}" for f in strays]
        rows.append(row)
    return rows, replayed.firings, replayed, start


def route(rows: list[Row], chosen: list[Scenario], firings: list[Firing], config: Path, workdir: Path) -> None:
    """Send what still fires at the end to a real Alertmanager; note per scenario what it notifies."""
    with AlertmanagerProcess(workdir, config).start() as manager:
        manager.wait_ready()
        manager.post_alerts([{"labels": {"alertname": f.alert, **f.labels},
                              "startsAt": _rfc3339(f.start)} for f in firings if f.end is None])
        time.sleep(1.0)
        for row, scenario in zip(rows, chosen):
            row.notified = notified(manager, scenario.namespace)


def notified(manager: AlertmanagerProcess, namespace: str) -> str:
    """What Alertmanager notifies for one service, by receiver, and what it holds back as inhibited."""
    sent = sorted({(group["receiver"]["name"], alert["labels"]["alertname"])
                   for group in manager.groups(inhibited=False) for alert in group["alerts"]
                   if belongs(alert["labels"], namespace)})
    inhibited = sorted({f"{alert['labels']['alertname']} {alert['labels'].get('tier', '')}".strip()
                        for alert in manager.alerts()
                        if alert["status"]["inhibitedBy"] and belongs(alert["labels"], namespace)})
    text = "; ".join(f"{receiver}: {', '.join(a for r, a in sent if r == receiver)}"
                     for receiver in ("page", "ticket") if any(r == receiver for r, _ in sent))
    return (text or "nothing") + (f" (inhibited: {', '.join(inhibited)})" if inhibited else "")


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def budget_from_the_first_minute(replayed: Replayed, start: float) -> list[str]:
    """The healthy service's budget and burn in its first two minutes: problems, if any."""
    problems = []
    for (expr, t), result in replayed.values.items():
        name = expr.split("{")[0]
        want = 1.0 if name == "slo:period_error_budget_remaining:ratio" else 0.0
        values = [float(r["value"][1]) for r in result]
        if values != [want]:
            problems.append(f"{name} read {values or 'nothing'} {int(t - start)} s in, not {want:g}")
    return problems


def run_lab(spec: Spec, workdir: Path, only: tuple[str, ...] = ()) -> tuple[list[Row], list[str]]:
    """Every scenario's row, and the healthy service's budget problems (none when it reads 100% at once)."""
    rules_dir = workdir / "rules"
    for name, text in render(spec).items():
        path = rules_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    every = scenarios(spec)
    rows: list[Row] = []
    problems: list[str] = []
    for replay_ in (HOURS, DAYS):
        chosen = [s for s in every if s.replay is replay_ and (not only or s.namespace in only)]
        if not chosen:
            continue
        replay_rows, firings, replayed, start = run_replay(spec, replay_, chosen, rules_dir, workdir)
        manager_dir = workdir / f"alertmanager-{replay_.name}"
        manager_dir.mkdir()
        route(replay_rows, chosen, firings, rules_dir / ALERTMANAGER_FILE, manager_dir)
        rows.extend(replay_rows)
        if replay_.all_rules:
            problems.extend(budget_from_the_first_minute(replayed, start))
    return rows, problems


def as_json(rows: list[Row], problems: list[str]) -> dict:
    return {"rows": [{**asdict(row), "passed": row.passed} for row in rows], "healthy_budget_problems": problems}
