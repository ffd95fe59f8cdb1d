"""The Prometheus rules Sloth would generate for a Spec's SLOs, in Sloth's exact form.

Why: our generated rules' evaluation cost is measured against Sloth's for the same SLOs in
one real Prometheus, and Sloth (Go) cannot be built or run on this machine or in CI. So this
module reproduces the output of `sloth generate` (v0.16.0, core plugins: optimised SLI
recordings, metadata recordings, multiwindow-multiburn alerts) for the default 30d and 28d
periods: group names, record and alert names, expressions with Sloth's whitespace, labels,
annotations, and Go's number formatting. tests/test_sloth_reference.py checks it against
Sloth's own golden files (tests/fixtures/sloth/, from slok/sloth's integration tests).

SLIs: a Sloth `events` or `raw` SLI (Sli.raw_errors/raw_total or raw_error_ratio, with
`{{.window}}`), or one of our native SLIs (Sli.errors/total EventSums), rendered as the Sloth
events SLI a conversion would give (`error_query`/`total_query` = the EventSum's rate PromQL,
summed by the spec's identity labels, as alerts/rules.py reads them). Pure code: spec in, rule
groups out, as plain dicts ready for YAML.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from slo_sidecar.alerts.rules import slo_id
from slo_sidecar.spec.fields import DEFAULT_SEVERITY
from slo_sidecar.spec.model import PERIODS, Slo, Spec

SPEC_VERSION = "prometheus/v1"  # sloth_spec: what Sloth reads; a native SLO reaches it converted
MODE = "cli-gen-prom"  # sloth_mode of `sloth generate`
WINDOW_LABEL = "sloth_window"
ID_LABELS = ("sloth_id", "sloth_service", "sloth_slo")

# Sloth's embedded alert windows (internal/alert/windows/google-30d.yaml and google-28d.yaml, the
# same for both): (tier, error budget % the alert spends, short window s, long window s), in
# Sloth's order: page quick, page slow, ticket quick, ticket slow. Other periods need a custom
# windows catalogue in Sloth, which is not reproduced.
WINDOWS = (
    ("page", 2.0, 300, 3600),
    ("page", 5.0, 1800, 6 * 3600),
    ("ticket", 10.0, 2 * 3600, 86400),
    ("ticket", 10.0, 6 * 3600, 3 * 86400),
)
SLOTH_PERIODS = ("28d", "30d")
_WINDOW_VAR = re.compile(r"\{\{\s*\.window\s*\}\}")  # how Sloth's Go template sees the range


# --- Go's formatting --------------------------------------------------------------------------------

def _digits(value: float) -> tuple[str, int]:
    """The shortest round-trip decimal digits of a positive float and its decimal point position
    (Python's repr and Go's strconv both give the shortest digits that read back the same float)."""
    _, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    text = "".join(map(str, digits))
    return text, len(text) + int(exponent)


def _fixed(digits: str, point: int) -> str:
    if point <= 0:
        return "0." + "0" * -point + digits
    if point >= len(digits):
        return digits + "0" * (point - len(digits))
    return digits[:point] + "." + digits[point:]


def go_float(value: float, verb: str = "g") -> str:
    """A float64 as Go writes it: `g` is fmt's %v and %g (shortest digits, exponent form below
    1e-4 and from 1e6 on: strconv's 'g' with precision -1 decides at 6 digits); `f` is
    strconv.FormatFloat(v, 'f', -1, 64) (shortest digits, never an exponent)."""
    value = float(value)
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    digits, point = _digits(abs(value))
    exp = point - 1
    if verb == "g" and (exp < -4 or exp >= 6):
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    return sign + _fixed(digits, point)


def prom_duration(seconds: int) -> str:
    """prometheus/common's model.Duration.String(): years and weeks only when exact (28d is 4w)."""
    out, rest = "", seconds * 1000
    for unit, size, exact in (("y", 365 * 86400_000, True), ("w", 7 * 86400_000, True), ("d", 86400_000, False),
                              ("h", 3600_000, False), ("m", 60_000, False), ("s", 1000, False), ("ms", 1, False)):
        if exact and rest % size:
            continue
        if rest // size:
            out += f"{rest // size}{unit}"
            rest %= size
    return out or "0s"


def _go_quote(value: str) -> str:
    """Go's %q for a label value (strconv.Quote), for the characters label values carry."""
    escapes = {"\\": "\\\\", '"': '\\"', "\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
               "\t": "\\t", "\v": "\\v"}
    return '"' + "".join(escapes.get(c, f"\\x{ord(c):02x}" if ord(c) < 0x20 or ord(c) == 0x7F else c)
                         for c in value) + '"'


def _filter(labels: dict[str, str]) -> str:
    """model.LabelSet.String(): labels sorted by name, `{a="1", b="2"}`."""
    return "{" + ", ".join(f"{name}={_go_quote(labels[name])}" for name in sorted(labels)) + "}"


# --- the rules ----------------------------------------------------------------------------------

def _period_s(slo: Slo) -> int:
    if slo.period not in SLOTH_PERIODS:
        raise ValueError(f"{slo.key}: Sloth's default windows cover {' and '.join(SLOTH_PERIODS)} periods, "
                         f"not {slo.period}")
    return PERIODS[slo.period]


def _alerts(slo: Slo) -> list[tuple[str, float, int, int]]:
    """(tier, burn factor, short s, long s) per Sloth alert, the factor computed as Sloth does
    (budget % x period hours / 100 / long window hours: 13.44 and 5.6000000000000005 for 28d)."""
    period_h = _period_s(slo) / 3600
    return [(tier, percent * period_h / 100 / (long / 3600), short, long) for tier, percent, short, long in WINDOWS]


def _ratio_expr(spec: Spec, slo: Slo, window: str) -> str:
    """The SLI's error ratio over one window, as Sloth's events or raw SLI template renders it."""
    sli = slo.sli
    if sli.errors is not None and sli.total is not None:  # native: as a converted Sloth events SLI
        errors, total = sli.errors.rate_promql(window, spec.identity), sli.total.rate_promql(window, spec.identity)
    elif sli.raw_errors is not None and sli.raw_total is not None:
        errors, total = (_WINDOW_VAR.sub(window, query) for query in (sli.raw_errors, sli.raw_total))
    elif sli.raw_error_ratio is not None:
        return f"({_WINDOW_VAR.sub(window, sli.raw_error_ratio)})"
    else:
        raise ValueError(f"{slo.key}: the SLI has neither events nor a raw error ratio")
    return f"({errors})\n/\n({total})\n"


def _ids(spec: Spec, slo: Slo) -> dict[str, str]:
    return {"sloth_id": slo_id(spec, slo), "sloth_service": spec.service, "sloth_slo": slo.name}


def _sli_group(spec: Spec, slo: Slo) -> dict[str, Any]:
    ids, own = _ids(spec, slo), {**spec.labels, **slo.labels}  # Sloth: MergeLabels(ids, window, slo labels)
    alerts = _alerts(slo)
    windows = sorted({w for _, _, short, long in alerts for w in (short, long)})
    rules = [{"record": f"slo:sli_error:ratio_rate{prom_duration(w)}", "expr": _ratio_expr(spec, slo, prom_duration(w)),
              "labels": {**ids, WINDOW_LABEL: prom_duration(w), **own}} for w in windows]
    base, period = f"slo:sli_error:ratio_rate{prom_duration(alerts[0][2])}", prom_duration(_period_s(slo))
    selector = f"{base}{_filter(ids)}[{period}]"
    rules.append({"record": f"slo:sli_error:ratio_rate{period}",
                  "expr": f"sum_over_time({selector})\n/ ignoring ({WINDOW_LABEL})\ncount_over_time({selector})\n",
                  "labels": {**ids, WINDOW_LABEL: period, **own}})
    return {"name": f"sloth-slo-sli-recordings-{ids['sloth_id']}", "rules": rules}


def _meta_group(spec: Spec, slo: Slo, version: str) -> dict[str, Any]:
    ids = _ids(spec, slo)
    labels, selector = {**ids, **spec.labels, **slo.labels}, _filter(ids)
    ratio, period_s = slo.objective / 100, _period_s(slo)

    def burn(window: str) -> str:
        return (f"slo:sli_error:ratio_rate{window}{selector}\n/ on(sloth_id, sloth_slo, sloth_service) group_left\n"
                f"slo:error_budget:ratio{selector}\n")

    rules = [
        {"record": "slo:objective:ratio", "expr": f"vector({go_float(ratio)})"},
        {"record": "slo:error_budget:ratio", "expr": f"vector(1-{go_float(ratio)})"},
        {"record": "slo:time_period:days", "expr": f"vector({go_float(period_s / 3600 / 24)})"},
        {"record": "slo:current_burn_rate:ratio", "expr": burn(prom_duration(_alerts(slo)[0][2]))},
        {"record": "slo:period_burn_rate:ratio", "expr": burn(prom_duration(period_s))},
        {"record": "slo:period_error_budget_remaining:ratio", "expr": f"1 - slo:period_burn_rate:ratio{selector}"},
    ]
    for rule in rules:
        rule["labels"] = labels
    rules.append({"record": "sloth_slo_info", "expr": "vector(1)",
                  "labels": {**labels, "sloth_version": version, "sloth_mode": MODE, "sloth_spec": SPEC_VERSION,
                             "sloth_objective": go_float(slo.objective, "f")}})
    return {"name": f"sloth-slo-meta-recordings-{ids['sloth_id']}", "rules": rules}


def _alert_group(spec: Spec, slo: Slo) -> dict[str, Any] | None:
    selector, budget = _filter(_ids(spec, slo)), go_float((100 - slo.objective) / 100)
    rules: list[dict[str, Any]] = []
    for tier_name in ("page", "ticket"):
        tier = getattr(slo, tier_name)
        if not tier.enabled:
            continue
        terms = []
        for _, factor, short, long in (a for a in _alerts(slo) if a[0] == tier_name):
            threshold = f"({go_float(factor)} * {budget})"
            terms.append("\n    and\n".join(
                f"    max(slo:sli_error:ratio_rate{prom_duration(w)}{selector} > {threshold}) without ({WINDOW_LABEL})"
                for w in (short, long)))
        # Our reader keeps `severity` apart from the tier's labels, defaulted when absent: a spec's own
        # severity label is emitted, the default (which Sloth never adds) is not.
        severity = {} if tier.severity == DEFAULT_SEVERITY[tier_name] else {"severity": tier.severity}
        rules.append({
            "alert": slo.alert_name,
            "expr": "(\n" + "\n)\nor\n(\n".join(terms) + "\n)\n",
            "labels": {"sloth_severity": tier_name, **tier.labels, **severity},
            "annotations": {
                "title": (f"({tier_name}) {{{{$labels.sloth_service}}}} {{{{$labels.sloth_slo}}}} SLO error budget "
                          "burn rate is too fast."),
                "summary": ("{{$labels.sloth_service}} {{$labels.sloth_slo}} SLO error budget burn rate is over "
                            "expected."),
                **tier.annotations,
            },
        })
    return {"name": f"sloth-slo-alerts-{slo_id(spec, slo)}", "rules": rules} if rules else None


def sloth_rule_groups(spec: Spec, version: str = "v0.16.0") -> list[dict[str, Any]]:
    """Sloth's rule groups for every SLO of the spec, in its order: SLI recordings, metadata
    recordings, alerts (left out when both alerts are disabled, as Sloth leaves out empty groups).
    `version` is what `sloth version` prints, for sloth_slo_info's sloth_version label. Time-slice SLOs are
    left out: Sloth cannot write them."""
    groups: list[dict[str, Any]] = []
    for slo in spec.slos:
        if slo.sli.timeslices is not None:  # Sloth has no time-slice SLIs (slok/sloth#301): nothing to compare
            continue
        alerts = _alert_group(spec, slo)
        groups += [_sli_group(spec, slo), _meta_group(spec, slo, version), *([alerts] if alerts else [])]
    return groups
