"""Sloth's `prometheus/v1` spec, read into the same Spec: Sloth users switch without rewriting anything.

Sloth SLIs are PromQL (`events.error_query`/`total_query`, or `raw.error_ratio_query`,
with `{{.window}}` in place of the range). Prometheus evaluates them, so the
generated rules and alerts are complete; the sidecar cannot evaluate PromQL,
so it serves no live burn rates for them (the generator says so).
"""

from __future__ import annotations

from typing import Any

from .fields import DEFAULT_MIN_EVENTS, DEFAULT_SEVERITY, FieldReader, alert_name, check_alerts_can_fire
from .model import AlertTier, Sli, Slo, Spec
from .yaml_tree import Located, Path_

SLOTH_TOP = ("version", "service", "labels", "slos")
SLOTH_SLO = ("name", "objective", "description", "labels", "sli", "alerting")
SLOTH_ALERTING = ("name", "labels", "annotations", "page_alert", "ticket_alert")
SLOTH_TIER = ("disable", "labels", "annotations")
WINDOW = "{{.window}}"


def parse_sloth(doc: Located) -> Spec:
    reader = FieldReader(doc)
    top = reader.mapping(doc.value, (), SLOTH_TOP, required=("service", "slos"))
    service = reader.string(top["service"], ("service",))
    if not isinstance(top["slos"], list) or not top["slos"]:
        raise reader.fail(("slos",), "expected a non-empty list of SLOs")
    slos = tuple(_slo(reader, item, ("slos", i)) for i, item in enumerate(top["slos"]))
    # No operational alerts: a Sloth spec's service need not be an LLM engine at all.
    return Spec(service, reader.labels(top.get("labels"), ("labels",)), slos, None, "docs/runbooks/",
                doc.source, format="prometheus/v1", identity=())


def _slo(reader: FieldReader, value: Any, path: Path_) -> Slo:
    slo = reader.mapping(value, path, SLOTH_SLO, required=("name", "objective", "sli"))
    name = reader.slo_name(slo["name"], (*path, "name"))
    objective = reader.objective(slo["objective"], (*path, "objective"))
    sli = _sli(reader, slo["sli"], (*path, "sli"))
    alerting = reader.mapping(slo.get("alerting") or {}, (*path, "alerting"), SLOTH_ALERTING)
    tiers = {tier: _tier(reader, alerting.get(f"{tier}_alert"), (*path, "alerting", f"{tier}_alert"), tier,
                         reader.labels(alerting.get("labels"), (*path, "alerting", "labels")),
                         reader.labels(alerting.get("annotations"), (*path, "alerting", "annotations")))
             for tier in ("page", "ticket")}
    parsed = Slo(name=name, description=str(slo.get("description", "")), objective=objective, period="30d",
                 sli=sli, labels=reader.labels(slo.get("labels"), (*path, "labels")),
                 alert_name=str(alerting.get("name") or alert_name(name)), min_events=DEFAULT_MIN_EVENTS,
                 page=tiers["page"], ticket=tiers["ticket"])
    check_alerts_can_fire(reader, parsed, path)
    return parsed


def _sli(reader: FieldReader, value: Any, path: Path_) -> Sli:
    sli = reader.mapping(value, path, ("events", "raw", "plugin"))
    if "plugin" in sli:
        raise reader.fail((*path, "plugin"), "Sloth SLI plugins are not supported; use events or raw")
    if len(sli) != 1:
        raise reader.fail(path, "expected exactly one of events, raw")
    if "events" in sli:
        events = reader.mapping(sli["events"], (*path, "events"), ("error_query", "total_query"),
                                required=("error_query", "total_query"))
        errors = _query(reader, events["error_query"], (*path, "events", "error_query"))
        total = _query(reader, events["total_query"], (*path, "events", "total_query"))
        return Sli("events", None, None, "Sloth events SLI (PromQL)", raw_errors=errors, raw_total=total)
    raw = reader.mapping(sli["raw"], (*path, "raw"), ("error_ratio_query",), required=("error_ratio_query",))
    ratio = _query(reader, raw["error_ratio_query"], (*path, "raw", "error_ratio_query"))
    return Sli("raw", None, None, "Sloth raw SLI (PromQL)", raw_error_ratio=ratio)


def _query(reader: FieldReader, value: Any, path: Path_) -> str:
    query = reader.string(value, path).strip()
    if WINDOW not in query:
        raise reader.fail(path, f"expected the range as {WINDOW}, as Sloth requires")
    return query


def _tier(reader: FieldReader, value: Any, path: Path_, tier: str, common_labels: dict[str, str],
          common_annotations: dict[str, str]) -> AlertTier:
    spec = reader.mapping(value or {}, path, SLOTH_TIER)
    disabled = spec.get("disable", False)
    if not isinstance(disabled, bool):
        raise reader.fail((*path, "disable"), f"expected true or false, got {disabled!r}")
    labels = {**common_labels, **reader.labels(spec.get("labels"), (*path, "labels"))}
    severity = labels.pop("severity", DEFAULT_SEVERITY[tier])
    annotations = {**common_annotations, **reader.labels(spec.get("annotations"), (*path, "annotations"))}
    return AlertTier(not disabled, severity, labels, annotations)
