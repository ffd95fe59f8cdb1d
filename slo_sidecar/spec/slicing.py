"""A spec document sliced per tenant: every SLO the engine can judge per tenant gets `slice_by: [model]`.

Pure, on the YAML document (a dict), so the result is a spec file of its own that the
sidecar, the rules and the dashboards all read, with the thresholds of the document it
came from (one copy of each). The demo judges its two tenants this way.
"""

from __future__ import annotations

import copy
from typing import Any

from .model import TENANT_LABEL


def can_slice(slo: dict[str, Any]) -> bool:
    """Availability, goodput and exact latency SLIs: the engine's counters carry the tenant. vLLM's
    latency histograms do not (a tenant label there multiplies their series)."""
    sli = slo.get("sli") or {}
    latency = sli.get("latency")
    if latency is not None:
        return "histogram" not in latency and latency.get("source", "exact") == "exact"
    return "availability" in sli or "goodput" in sli


def sliced_document(document: dict[str, Any], tenants: tuple[str, ...],
                    objectives: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """A copy of `document` with each SLO that can be sliced judged per tenant; `objectives` gives, by SLO
    name, a tenant's own objective where it differs from the SLO's (e.g. {"availability": {"legal": 99}})."""
    sliced = copy.deepcopy(document)
    for slo in sliced.get("slos", []):
        if "slice_by" in slo or not can_slice(slo):
            continue
        own = (objectives or {}).get(slo.get("name"), {})
        slo["slice_by"] = [TENANT_LABEL]
        slo["slices"] = {tenant: ({"objective": own[tenant]} if tenant in own else {}) for tenant in tenants}
    return sliced
