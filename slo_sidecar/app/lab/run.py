"""`slo-sidecar lab`: replay incidents into a real Prometheus with the generated rules and print when each
page and ticket came against when the SRE Workbook's arithmetic says it must (scenarios.py, expect.py).

A row passes when every expected alert fired once, within its tolerance of the expected time, and
nothing else fired for that service. The tolerance is the path a crossing takes to an alert, as in a
live Prometheus: up to one scrape before the counters show it, one evaluation of the recording group,
one of the alert group (scrape + 2 steps: 45 s here). A ticket may come up to half a base window
(150 s) later still: its 1d and 3d windows are summed from the 5-minute recordings, which in an
incident's first five minutes miss up to 150 s of its errors (docs/slos.md, "Long windows"). The exact
timing, to the evaluation, is promtool's to prove (tests/test_alert_timing.py): here an alert's `for:`
one minute off shows as a page out of tolerance, not always as a ticket out of it.

The replay tells when alerts fire; Alertmanager is fed by Prometheus in the live scenario (live.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from slo_sidecar.alerts.render import render
from slo_sidecar.spec.model import Spec

from .pods import Pod
from .replay import Firing, Replayed, replay
from .scenarios import HOURS, Replay, Scenario, scenarios

BUDGET_CHECKS = ("slo:period_error_budget_remaining:ratio", "slo:current_burn_rate:ratio")
# Not an alert: the intervals in which the error-budget policy holds releases back, judged against a
# scenario's Release.
RELEASES_FROZEN = "releases frozen"
WATCH = ((RELEASES_FROZEN, "slo:release_allowed == 0"),)


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
    frozen_s: float | None = None  # measured: releases frozen after onset (where the scenario judges it)
    lifted_s: float | None = None
    release: str = ""  # the policy's verdict over the scenario, expected against measured, in words
    notified: str = ""  # live: what Alertmanager notifies (inhibited ones left out)
    measured: str = ""  # live: what was seen when, beside the page and ticket times
    why: str = ""

    @property
    def passed(self) -> bool:
        return not self.false_fires and not self.missing


LONG_WINDOW_LAG_S = 150  # half the 5-minute base window the long windows are summed from


def tolerance(replay_: Replay, tier: str) -> tuple[float, float]:
    """How much earlier and later than the arithmetic's time an alert may fire (the module's docstring)."""
    path = replay_.scrape_s + 2 * replay_.step_s
    return path, path + (LONG_WINDOW_LAG_S if tier == "ticket" else 0)


def belongs(labels: dict[str, str], namespace: str) -> bool:
    """An alert is a scenario's by its namespace, or by an instance of its pod (`<job>-<namespace>:<port>`)."""
    host = labels.get("instance", "").partition(":")[0]
    return labels.get("namespace") == namespace or host.partition("-")[2] == namespace


def judge(scenario: Scenario, firings: list[Firing], onset: float) -> Row:
    """The scenario's row: its alerts' firings against the expected ones. Each expected alert fires once:
    one that resolves and fires again (per label set) is flapping, a false fire of its own."""
    first: dict[tuple[str, str], float] = {}
    times: dict[tuple[str, str, tuple[tuple[str, str], ...]], int] = {}
    for firing in firings:
        if firing.alert != RELEASES_FROZEN and belongs(firing.labels, scenario.namespace):
            key = (firing.alert, firing.labels.get("tier", ""))
            first[key] = min(first.get(key, math.inf), firing.start - onset)
            one = (*key, tuple(sorted(firing.labels.items())))
            times[one] = times.get(one, 0) + 1
    row = Row(scenario.name, "", None, None, None, None, why=scenario.why)
    for key, after in sorted(first.items(), key=lambda item: item[1]):
        expected = scenario.expected.get(key)
        early, late = tolerance(scenario.replay, key[1])
        if expected is None or not expected - early <= after <= expected + late:
            row.false_fires.append(f"{key[0]} ({key[1]}) at {readable(after)}"
                                   + (f", expected {readable(expected)}" if expected is not None else ""))
    row.false_fires += [f"{alert} ({tier}) fired {count} times: it resolved mid-incident and fired again"
                        for (alert, tier, _), count in sorted(times.items()) if count > 1]
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
    if scenario.release is not None:
        judge_release(row, scenario, [f for f in firings if f.alert == RELEASES_FROZEN
                                      and belongs(f.labels, scenario.namespace)], onset)
    return row


# The period's ratio, summed from the 5-minute recordings, reads within 1% of the raw counters' (measured:
# 0.7% low three hours after an incident). Where the ratio crosses the policy's bound slowly, as when clean
# traffic dilutes spent budget back, 1% of it is 1% of the service's age: the lift may be that much off.
PERIOD_RATIO_PRECISION = 0.01


def judge_release(row: Row, scenario: Scenario, frozen: list[Firing], onset: float) -> None:
    """Releases frozen and lifted when the scenario's Release says, and frozen once. The freeze within the
    ticket's tolerance (the period's ratio is summed from the 5-minute recordings, as the long windows are),
    the lift within it widened by PERIOD_RATIO_PRECISION of the service's age at the lift."""
    expected = scenario.release
    row.frozen_s = frozen[0].start - onset if frozen else None
    row.lifted_s = frozen[0].end - onset if frozen and frozen[0].end is not None else None
    row.release = (f"frozen {readable(row.frozen_s)}, lifted {readable(row.lifted_s)} (expected "
                   f"{readable(expected.frozen_s)}, {readable(expected.lifted_s)})")
    if len(frozen) > 1:
        row.false_fires.append(f"releases frozen {len(frozen)} times: lifted mid-incident and frozen again")
    for what, want, got in (("frozen", expected.frozen_s, row.frozen_s), ("lifted", expected.lifted_s, row.lifted_s)):
        early, late = tolerance(scenario.replay, "ticket")
        if what == "lifted" and want is not None:
            drift = PERIOD_RATIO_PRECISION * (scenario.replay.history_s + want)
            early, late = early + drift, late + drift
        if want is None and got is not None:
            row.false_fires.append(f"releases {what} at {readable(got)}, expected never")
        elif want is not None and (got is None or not want - early <= got <= want + late):
            row.missing.append(f"releases {what} expected at {readable(want)}, measured {readable(got)}")


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
    files = sorted(rules_dir.glob("*.rules.yaml"))
    instants = tuple((f'{name}{{sloth_slo="availability", namespace="lab-healthy"}}', start + after)
                     for name in BUDGET_CHECKS for after in (60, 120))
    replayed = replay(series, files, start, end, workdir / replay_.name, step_s=replay_.step_s,
                      scrape_interval_s=replay_.scrape_s, instants=instants, watch=WATCH)
    rows = [judge(scenario, replayed.firings, onset) for scenario in chosen]
    strays = [f for f in replayed.firings
              if f.alert != RELEASES_FROZEN and not any(belongs(f.labels, s.namespace) for s in chosen)]
    if strays:  # an alert of no service (LLMSidecarAbsent, say) is a false fire of the whole replay
        row = Row(f"alerts of no service ({replay_.name} replay)", "no alert", None, None, None, None)
        row.false_fires = [f"{f.alert} {f.labels} at {readable(f.start - onset)}" for f in strays]
        rows.append(row)
    return rows, replayed.firings, replayed, start


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


def write_rules(spec: Spec, workdir: Path) -> Path:
    """The generated rules the replays and the live scenario load, in workdir/rules."""
    rules_dir = workdir / "rules"
    for name, text in render(spec).items():
        path = rules_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return rules_dir


def run_lab(spec: Spec, workdir: Path, only: tuple[str, ...] = (), rules_dir: Path | None = None
            ) -> tuple[list[Row], list[str]]:
    """Every scenario's row, and the healthy service's budget problems (none when it reads 100% at once).
    `rules_dir`: the rules already written (write_rules), else written here."""
    rules_dir = rules_dir or write_rules(spec, workdir)
    chosen = [s for s in scenarios(spec) if not only or s.namespace in only]
    if not chosen:
        return [], []
    rows, _, replayed, start = run_replay(spec, HOURS, chosen, rules_dir, workdir)
    return rows, budget_from_the_first_minute(replayed, start)


def as_json(rows: list[Row], problems: list[str]) -> dict:
    return {"rows": [{**asdict(row), "passed": row.passed} for row in rows], "healthy_budget_problems": problems}
