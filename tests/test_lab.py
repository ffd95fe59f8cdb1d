"""`slo-sidecar lab`, as a user runs it: every incident fires what the SRE Workbook's arithmetic says, when
it says, and nothing else, through a real Prometheus (and, in the live SIGKILL scenario, Alertmanager)."""

from __future__ import annotations

import json
import subprocess
import sys

from slo_sidecar.app.lab.scenarios import scenarios
from slo_sidecar.spec.load import DEFAULT_SPEC, load_spec


def test_the_lab_passes_every_scenario(tmp_path):
    report = tmp_path / "lab.json"
    done = subprocess.run([sys.executable, "-m", "slo_sidecar.app.cli", "lab", "--out", str(tmp_path / "work"),
                           "--json", str(report), "--healthy-minutes", "0.25"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    rows = json.loads(report.read_text())["rows"]
    names = [row["scenario"] for row in rows]
    live = ["SIGKILLed engine (live processes)", "weights corrupted (final norm x1.1) (live processes)",
            "NaN logits (live processes)", "healthy engine, batch 1 to 4, 0.25 min (live processes)"]
    assert names == [s.name for s in scenarios(load_spec(str(DEFAULT_SPEC)))] + live
    assert all(row["passed"] and not row["false_fires"] and not row["missing"] for row in rows)
    by_name = dict(zip(names, rows))
    # The bounds, beside the arithmetic each row was judged by: a total outage pages within 90 s,
    # a SIGKILLed engine within 3 minutes (here the outage page, within 90 s too).
    assert by_name["total outage (every request 5xx)"]["page_s"] <= 90
    assert by_name["SIGKILLed engine (live processes)"]["page_s"] <= 90
    assert "| healthy service | no alert | - | - | 0 | pass |" in done.stdout
    assert "the healthy service at burn 0 and budget 100% from its first minute" in done.stdout
    # The error-budget policy: a short incident freezes releases, clean traffic lifts them (the row judges
    # both times against the arithmetic); the healthy service's never freeze.
    freeze = by_name["budget spent and earned back (10% 5xx for 180 s)"]
    assert freeze["frozen_s"] is not None and freeze["lifted_s"] > freeze["frozen_s"] + 3600, freeze
    assert by_name["healthy service"]["frozen_s"] is None and by_name["healthy service"]["release"]
    assert "budget spent and earned back (10% 5xx for 180 s): " in done.stdout and "; releases frozen " in done.stdout
    # The live scenario's alerts reached Alertmanager from Prometheus, routed by the generated configuration.
    assert "page: " in by_name["SIGKILLed engine (live processes)"]["notified"]
    # A pod that answers wrong: the fast page within 60 s and out of its Service within 30 s (each row checks
    # both, and the way back after the undo, against the module's bounds), and no availability or latency alert.
    for fault in ("weights corrupted (final norm x1.1) (live processes)", "NaN logits (live processes)"):
        assert by_name[fault]["page_s"] <= 60 and by_name[fault]["page_alert"] == "CorrectnessSLOGoldenProbesBad"
        assert "unready" in by_name[fault]["measured"]


def test_a_bad_out_directory_is_refused(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    done = subprocess.run([sys.executable, "-m", "slo_sidecar.app.cli", "lab", "--out", str(tmp_path / "full")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "not empty" in done.stderr and "Traceback" not in done.stderr
