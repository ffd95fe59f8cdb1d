"""When the committed availability alerts go pending, fire and resolve, decided by Prometheus's own rule
manager (promtool), against minutes worked out here from the SRE Workbook's arithmetic. Nothing is
imported from the generator: the thresholds, windows, event guards and `for:` below are the Workbook's
and docs/slos.md's, written out, so a generator that drifts from them fails here.

The arithmetic. Traffic is steady at R requests a minute; the counters are sampled once a minute and the
rules evaluated once a minute, so `rate(x[W])` at minute m is exactly the increase over minutes m-W+1 .. m
divided by W (the window's first sample sits on its edge: no extrapolation), and a window's error ratio is
(error-minutes in it x f) / (minutes of data in it). The incident starts at ONSET: minute ONSET + t is
the t-th minute with errors. The availability SLO is 99.9%: budget 0.001.
- page: 14.4x over 1h and 5m (ratio > 0.0144, >= 70 events in 1h) or 6x over 6h and 30m (> 0.006,
  >= 167 events in 6h), `for: 1m`;
- ticket: 3x over 1d and 2h (> 0.003, >= 334 in 1d) or 1x over 3d and 6h (> 0.001, >= 1000 in 3d),
  `for: 10m`;
- outage page: over half the events failed over 2m and over 1m, >= 20 events in 2m, `for: 0s`.
Prometheus marks an alert pending at the first evaluation its expression holds, firing once it has held
for `for:` (at pending + for), and drops it at the first evaluation it does not hold.

Every expected state is exact to the evaluation: promtool evaluates the groups in the order given
(recordings first), so an alert reads the recordings of its own evaluation. (A live Prometheus runs its
groups concurrently: there an alert may read recordings one evaluation old, and come one step later.)
Each transition is checked on both sides, so a `for:` one minute longer or shorter, a burn factor or a
window changed, fails a check.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field

import yaml

from tests.helpers import REPO, promtool_counter
from tests.test_rules import needs_promtool

RULES = REPO / "generated" / "alerts" / "slo-availability.rules.yaml"
SELECTION = 'slo_engine_http_requests_total{endpoint="/v1/completions",namespace="lab",model_name="tiny"'
PAGE, TICKET, OUTAGE = ("AvailabilitySLO", "page"), ("AvailabilitySLO", "ticket"), ("AvailabilitySLOOutage", "page")
ONSET = 360  # six hours of clean traffic first: every window up to 6h starts full of it


@dataclass
class Incident:
    name: str
    per_minute: float
    burns: list[tuple[int, int, float]]  # (from, to, error ratio): minutes ONSET + from + 1 .. ONSET + to fail
    # (alert, tier) -> [(minutes after ONSET, state: "pending", "firing" or None)]
    states: dict[tuple[str, str], list[tuple[int, str | None]]] = field(default_factory=dict)

    def ratio(self, minute: int) -> float:
        return max((f for start, end, f in self.burns if ONSET + start < minute <= ONSET + end), default=0.0)


INCIDENTS = [
    Incident("a total outage for an hour", 600, [(0, 60, 1.0)], {
        # outage: t=1: 1m 100% but 2m 1/2 = 0.5, not over; t=2: 2m 100%. `for: 0s`: firing at once, never
        # pending. Once the errors stop (t=61) the 1m window is clean: resolved.
        OUTAGE: [(1, None), (2, "firing"), (60, "firing"), (61, None)],
        # page: t=1: 1h 1/60 = 0.0167 > 0.0144, 5m 1/5 > 0.0144, 36,000 events: pending; firing at 1 + 1m.
        # After the hour, s minutes on: the 6h/30m tier holds while 30m (30 - s)/30 > 0.006, to s = 29;
        # so firing at 60 + 29 = 89, resolved at 90 (the 14.4x tier's 5m window emptied at s = 5).
        PAGE: [(0, None), (1, "pending"), (2, "firing"), (89, "firing"), (90, None)],
        # ticket: t=1: 1x tier: 6h 1/360 = 0.0028 > 0.001; 3d over the 361 minutes there are 1/361 > 0.001;
        # 216,600 events: pending; firing at 1 + 10m. After the hour, the 1x tier's 6h window holds
        # (360 - s)/360 > 0.001 to s = 359 (the 3d window far above): firing at 419, resolved at 420.
        TICKET: [(0, None), (1, "pending"), (10, "pending"), (11, "firing"), (419, "firing"), (420, None)],
    }),
    Incident("70% failing for ten minutes", 600, [(0, 10, 0.7)], {
        # outage: 1m 0.7 > 0.5 from t=1; 2m: t=1 0.35, t=2 0.7: firing at 2 (a 3m window would read
        # 1.4/3 = 0.47 at t=2 and fire a minute later). Clean minute 11: resolved.
        OUTAGE: [(1, None), (2, "firing"), (10, "firing"), (11, None)],
        # page: 1h 0.7t/60 > 0.0144 from t = 2 (t=1: 0.0117): pending at 2, firing at 3.
        PAGE: [(1, None), (2, "pending"), (3, "firing")],
    }),
    Incident("a 20x burn (2% failing) for 90 minutes", 600, [(0, 90, 0.02)], {
        # page: 14.4x tier: 1h 0.02t/60 > 0.0144 when t > 43.2: pending at 44 (5m at 0.02 long since); the
        # 6x tier needs 6h 0.02t/360 > 0.006, t > 108: not within 90. Firing at 45. (13x would cross at
        # t > 39.) Once the burn stops, s minutes on: 5m 0.02(5 - s)/5 > 0.0144 to s = 1: firing at 91,
        # resolved at 92.
        PAGE: [(43, None), (44, "pending"), (45, "firing"), (91, "firing"), (92, None)],
        # outage: 2% is far from half: never.
        OUTAGE: [(2, None), (45, None)],
    }),
    Incident("a 6.3x burn (0.63% failing) for six hours", 600, [(0, 360, 0.0063)], {
        # page: the 14.4x tier never (0.0063 < 0.0144); the 6x tier: 6h 0.0063t/360 > 0.006 when
        # t > 342.9 (30m at 0.0063 long since): pending at 343, firing at 344 (5.73 h into the burn).
        PAGE: [(342, None), (343, "pending"), (344, "firing")],
    }),
    Incident("two ten-minute outages an hour apart", 600, [(0, 10, 1.0), (60, 70, 1.0)], {
        # page: pending 1, firing 2; after the first outage the 6x tier's 30m window holds it to
        # 10 + 29 = 39 (1/30 > 0.006), resolved at 40. The second outage: at 61 the 1h window holds
        # 10 of the first's error-minutes and 1 of the second's, the 5m 1/5: pending again, firing at 62.
        PAGE: [(1, "pending"), (2, "firing"), (39, "firing"), (40, None), (60, None), (61, "pending"),
               (62, "firing")],
        OUTAGE: [(2, "firing"), (10, "firing"), (11, None), (61, None), (62, "firing")],
    }),
    Incident("a quiet service (a request a minute) fails every request", 1, [(0, 60, 1.0)], {
        # outage: 2 events in 2m, under its guard of 20: never. 14.4x tier: 60 events in 1h, under 70:
        # never. 6x tier: 6h t/360 > 0.006 when t > 2.16, 30m at 100%, 362 events >= 167: pending at 3,
        # firing at 4.
        OUTAGE: [(2, None), (30, None), (60, None)],
        PAGE: [(2, None), (3, "pending"), (4, "firing")],
    }),
]


def _series(incident: Incident) -> list[dict[str, str]]:
    last = ONSET + max(minute for checks in incident.states.values() for minute, _ in checks)
    ratios = [incident.ratio(minute) for minute in range(last + 1)]
    bad = promtool_counter([incident.per_minute * r for r in ratios])
    good = promtool_counter([incident.per_minute * (1 - r) for r in ratios])
    return [{"series": SELECTION + ',code="500"}', "values": bad},
            {"series": SELECTION + ',code="200"}', "values": good}]


def _state(alert: tuple[str, str], state: str | None) -> dict[str, object]:
    name, tier = alert
    return {"expr": f'count by (alertstate) (ALERTS{{alertname="{name}", tier="{tier}"}})',
            "exp_samples": [{"labels": f'{{alertstate="{state}"}}', "value": 1}] if state else []}


@needs_promtool
def test_availability_alerts_change_state_at_the_workbooks_minute(tmp_path):
    groups = [group["name"] for group in yaml.safe_load(RULES.read_text())["groups"]]
    assert groups[-1].startswith("sloth-slo-alerts-")  # recordings first, then the alerts that read them
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "group_eval_order": groups,
        "tests": [{
            "name": incident.name,
            "interval": "1m",
            "input_series": _series(incident),
            "promql_expr_test": [{**_state(alert, state), "eval_time": f"{ONSET + minute}m"}
                                 for alert, checks in incident.states.items() for minute, state in checks],
        } for incident in INCIDENTS],
    }
    (tmp_path / "timing.test.yaml").write_text(yaml.safe_dump(test, sort_keys=False))
    result = subprocess.run(["promtool", "test", "rules", "timing.test.yaml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
