"""The generated Alertmanager configuration, checked by amtool and run by a real Alertmanager.

During a page the same SLO's ticket for the same service is inhibited; another service's ticket
is not, and each service's alerts are grouped apart; pages and tickets go to their receivers.
"""

from __future__ import annotations

import datetime
import shutil
import subprocess
import time

import pytest

from slo_sidecar.alerts.render import ALERTMANAGER_FILE
from slo_sidecar.app.processes import AlertmanagerProcess
from slo_sidecar.spec.load import DEFAULT_SPEC, load_spec
from tests.helpers import REPO

GENERATED = REPO / "generated" / "alerts" / ALERTMANAGER_FILE
needs_alertmanager = pytest.mark.skipif(
    shutil.which("prometheus-alertmanager") is None,
    reason="needs prometheus-alertmanager (Debian package; scripts/setup.sh installs it)")


@needs_alertmanager
def test_amtool_accepts_the_generated_configuration():
    result = subprocess.run(["amtool", "check-config", str(GENERATED)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 inhibit rules" in result.stdout and "2 receivers" in result.stdout


SPEC = load_spec(str(DEFAULT_SPEC))


def burn_alert(tier: str, model: str, slo: str = "availability") -> dict:
    """An SLO burn alert as the generated rules label it, for one service (namespace and model)."""
    severity = "critical" if tier == "page" else "warning"
    now = datetime.datetime.now(datetime.timezone.utc)
    return {"labels": {"alertname": "AvailabilitySLO", "severity": severity, "tier": tier, "sloth_severity": tier,
                       "sloth_id": f"{SPEC.service}-{slo}", "sloth_service": SPEC.service, "sloth_slo": slo,
                       "namespace": "inference", "model_name": model},
            "annotations": {"summary": f"{model} burns"},
            "startsAt": now.isoformat(), "endsAt": (now + datetime.timedelta(minutes=10)).isoformat()}


@needs_alertmanager
def test_a_page_inhibits_its_own_slos_ticket_for_its_own_service_only(tmp_path):
    with AlertmanagerProcess(tmp_path, GENERATED).start() as alertmanager:
        alertmanager.wait_ready()
        # Service m1 pages and tickets on availability; service m2 only tickets on it.
        # m1's TTFT SLO pages too (its failed requests missed their first-token target).
        alertmanager.post_alerts([burn_alert("page", "m1"), burn_alert("ticket", "m1"), burn_alert("ticket", "m2"),
                                  burn_alert("page", "m1", "ttft")])
        deadline = time.monotonic() + 15
        while True:
            states = {(a["labels"]["model_name"], a["labels"]["tier"]): a["status"] for a in alertmanager.alerts()
                      if a["labels"]["sloth_slo"] == "availability"}
            if len(states) == 3 and states[("m1", "ticket")]["state"] == "suppressed":
                break
            assert time.monotonic() < deadline, f"the ticket was not inhibited in 15 s: {states}"
            time.sleep(0.2)
        assert states[("m1", "page")]["state"] == "active"
        assert states[("m1", "ticket")]["inhibitedBy"], "inhibited by the page"
        assert states[("m2", "ticket")]["state"] == "active", "another service's ticket is not inhibited"

        def grouped(**options: bool) -> dict[tuple[str, str], int]:
            return {(g["labels"].get("model_name"), g["receiver"]["name"]): len(g["alerts"])
                    for g in alertmanager.groups(**options) if g["alerts"]}

        # One group per service and receiver: m1's two pages in one notification, pages to the page
        # receiver and tickets to the ticket one; what is notified leaves out m1's inhibited ticket and
        # keeps m2's.
        assert grouped() == {("m1", "page"): 2, ("m1", "ticket"): 1, ("m2", "ticket"): 1}
        assert grouped(inhibited=False) == {("m1", "page"): 2, ("m2", "ticket"): 1}
