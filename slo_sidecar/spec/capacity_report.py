"""The capacity report's wire format: what `slo-sidecar capacity --json` writes and the sidecar's
`--capacity` and bench/autoscale_sim.py read. Pure: text in, checked values out, one reason per error.

    {"version": "slo-sidecar/capacity/v1", "url": ..., "spec": ..., "steps": [...], "capacity_rps": 3.1}
"""

from __future__ import annotations

import json
import math
from typing import Any

CAPACITY_VERSION = "slo-sidecar/capacity/v1"


def parse_report(text: str) -> dict[str, Any]:
    """The report as a JSON object of this version; ValueError with the reason otherwise."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ValueError("not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object: the report of `slo-sidecar capacity --json`")
    version = data.get("version")
    if version != CAPACITY_VERSION:
        raise ValueError(f"version: expected {CAPACITY_VERSION!r}, got {version!r}")
    return data


def capacity_rps(report: dict[str, Any]) -> float:
    """The highest rate at which the pod met every SLO; ValueError where the report has none usable."""
    if "capacity_rps" not in report:
        raise ValueError("capacity_rps: missing")
    rps = report["capacity_rps"]
    if rps is None:
        raise ValueError("capacity_rps: null (the measurement found no rate that meets every SLO: "
                         "rerun `slo-sidecar capacity` at lower rates)")
    try:
        finite = not isinstance(rps, bool) and isinstance(rps, (int, float)) and math.isfinite(float(rps))
    except OverflowError:
        finite = False
    if not finite or rps <= 0:
        raise ValueError(f"capacity_rps: expected a number > 0, got {rps!r}")
    return float(rps)
