"""The Alertmanager configuration for the generated alerts: routing by tier, grouping per service,
and the inhibition of an SLO's ticket by its own page."""

from __future__ import annotations

from typing import Any

from slo_sidecar.spec.model import Spec


def alertmanager_config(spec: Spec) -> dict[str, Any]:
    """Alertmanager: pages to one receiver and tickets to another, grouped per service (one page names
    every SLO an incident burns: a failed request misses the latency SLOs too); a firing SLO page
    silences the same SLO's ticket for the same service, never another service's.

    The receivers have no integration: add your pager's (`pagerduty_configs`, ...) and your
    ticket or chat one, or copy `route` and `inhibit_rules` into your own configuration.
    """
    slo_alert = 'sloth_id=~".+"'
    return {
        "route": {
            "receiver": "ticket",
            # Per service, and per tenant where SLOs are sliced: one tenant's page is its own notification.
            "group_by": [*(spec.identity or ["sloth_service"]), *sorted({l for slo in spec.slos for l in slo.slice})],
            "group_wait": "30s", "group_interval": "5m", "repeat_interval": "4h",
            "routes": [{"matchers": ['tier="page"'], "receiver": "page", "group_wait": "10s",
                        "repeat_interval": "1h"}],
        },
        "receivers": [{"name": "page"}, {"name": "ticket"}],
        "inhibit_rules": [{
            "source_matchers": ['tier="page"', slo_alert],
            "target_matchers": ['tier="ticket"', slo_alert],
            "equal": ["sloth_id", *spec.identity],  # the same SLO of the same service, never another's
        }],
    }
