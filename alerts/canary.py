"""Canary analysis from the spec: for each SLO, the checks Argo Rollouts (an AnalysisTemplate) and Flagger (its
MetricTemplates and a Canary's analysis) run against Prometheus while a new version takes part of the traffic.

Each SLO gives two checks, on the same SLI event selections as its recording rules, narrowed to the canary's
pods (and the stable pods') by the `pod` label Prometheus's Kubernetes discovery puts on every series:

- burn: the canary's error ratio over CANARY_WINDOW over the SLO's budget. It fails above CANARY_BURN: a
  version that burns so, once it takes all the traffic, spends the period's budget in half the period.
- versus stable: the canary's burn less the stable pods' over the same window, on the same request mix. It
  fails above CANARY_MARGIN: the canary spends at least one more period's worth of budget than stable does.

Either check answers NaN until each side has the events the alerts' guard asks for at that burn (one failed
request alone cannot fail a canary): Argo reads NaN as inconclusive (neither condition holds), Flagger halts
the step without advancing.

The correctness SLO has a third check, golden: the canary's bad golden probes in the window (items that scored
further than the tolerance from their recorded baseline). It fails on one: the score has no noise to average
out (0 on CPU, well under the tolerance on GPU), and a 99% SLO's burn checks would need 50 probes, more than
one pod's sidecar scores in the window. It is NaN until the canary has scored the whole golden set once.
docs/rolling-out.md has the reasoning and the wiring.
"""

from __future__ import annotations

from typing import Any

from slo_sidecar.spec.model import GOLDEN_PROBES, EventSum, Matcher, Selection, Slo, Spec, duration_label

from .dump import dump
from .rules import slo_id

CANARY_WINDOW_S = 300  # the analysis window: what each check reads, every interval
CANARY_BURN = 2.0
CANARY_MARGIN = 1.0
GOLDEN_BOUND = 0  # bad golden probes on the canary: any fails it
DEFAULT_PROMETHEUS = "http://prometheus-operated.monitoring.svc:9090"  # the Prometheus Operator's service
ARGO_INTERVAL = "1m"
# Argo measures each check ARGO_COUNT times, ARGO_INTERVAL apart: any failure fails the analysis; it passes with
# at least one success (the measurements before the canary has its events are inconclusive), else it is
# inconclusive and the rollout waits for a person.
ARGO_COUNT = 5
MANAGED = {"app.kubernetes.io/managed-by": "slo-sidecar"}

ARGO_CANARY = (Matcher("namespace", "=", "{{args.namespace}}"), Matcher("pod", "=~", ".+-{{args.canary-hash}}-.+"))
ARGO_STABLE = (Matcher("namespace", "=", "{{args.namespace}}"), Matcher("pod", "=~", ".+-{{args.stable-hash}}-.+"))
# Flagger's canary pods are its target Deployment's, the stable ones its `-primary` copy's (Flagger's own
# builtin checks select them so).
FLAGGER_CANARY = (Matcher("namespace", "=", "{{ namespace }}"),
                  Matcher("pod", "=~", "{{ target }}-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)"))
FLAGGER_STABLE = (Matcher("namespace", "=", "{{ namespace }}"),
                  Matcher("pod", "=~", "{{ target }}-primary-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)"))


def judged(spec: Spec) -> list[Slo]:
    """The SLOs a canary is judged on: those whose SLI counts events (a PromQL-only ratio has no pod scope)."""
    return [slo for slo in spec.slos if slo.sli.errors is not None and slo.sli.total is not None]


def _burn(slo: Slo, pods: tuple[Matcher, ...]) -> tuple[str, str]:
    """(the burn over the window, the events in it) on the pods' series."""
    window = duration_label(CANARY_WINDOW_S)
    errors, total = (events.narrowed(*pods) for events in (slo.sli.errors, slo.sli.total))
    assert isinstance(errors, EventSum) and isinstance(total, EventSum)
    total_rate = total.rate_promql(window)
    return (f"({errors.rate_promql(window)} / {total_rate}) / {slo.error_budget:.12g}",
            f"{total_rate} * {CANARY_WINDOW_S}")


def burn_query(slo: Slo, canary: tuple[Matcher, ...]) -> str:
    """The canary's burn, or NaN while it has fewer events than the guard at CANARY_BURN."""
    burn, events = _burn(slo, canary)
    return f"(\n  {burn}\n  and on () ({events} >= {slo.events_needed(CANARY_BURN)})\n)\nor on () vector(NaN)"


def versus_query(slo: Slo, canary: tuple[Matcher, ...], stable: tuple[Matcher, ...]) -> str:
    """The canary's burn less the stable pods', or NaN while either has fewer events than the guard at
    CANARY_MARGIN."""
    (canary_burn, canary_events), (stable_burn, stable_events) = _burn(slo, canary), _burn(slo, stable)
    needed = slo.events_needed(CANARY_MARGIN)
    return (f"(\n  ({canary_burn})\n  - ({stable_burn})\n  and on () ({canary_events} >= {needed})\n"
            f"  and on () ({stable_events} >= {needed})\n)\nor on () vector(NaN)")


def golden_query(slo: Slo, canary: tuple[Matcher, ...], golden_items: int) -> str:
    """The canary's bad golden probes in the window; NaN while there are none and it has scored fewer than the
    golden set's items (a pass needs every item scored once)."""
    probes = slo.sli.golden_probes
    window = duration_label(CANARY_WINDOW_S)
    on_canary = (*probes.matchers, *canary)
    bad = f"sum(increase({Selection(GOLDEN_PROBES, (*on_canary, Matcher('result', '=', 'bad'))).promql()}[{window}]))"
    scored = f"sum(increase({Selection(GOLDEN_PROBES, on_canary).promql()}[{window}]))"
    return (f"(\n  {bad}\n  and on () ({bad} > 0 or on () {scored} >= {golden_items})\n)\n"
            f"or on () vector(NaN)")


def checks(slo: Slo, canary: tuple[Matcher, ...], stable: tuple[Matcher, ...], golden_items: int
           ) -> list[tuple[str, str, float]]:
    """(check, query, the bound it fails above) for one SLO."""
    out = [("burn", burn_query(slo, canary), CANARY_BURN),
           ("vs-stable", versus_query(slo, canary, stable), CANARY_MARGIN)]
    if slo.sli.kind == "correctness":
        out.append(("golden", golden_query(slo, canary, golden_items), GOLDEN_BOUND))
    return out


def _check(slo: Slo, check: str) -> str:
    """A check's name in a template: the SLO's key (a slice's value after a dash) and the check."""
    return f"{slo.key.replace('/', '-')}-{check}"


def argo_template(spec: Spec, slo: Slo, golden_items: int) -> dict[str, Any]:
    """An Argo Rollouts AnalysisTemplate: its Rollout passes the pods' hashes (podTemplateHashValue)."""
    def metric(check: str, query: str, bound: float) -> dict[str, Any]:
        return {"name": _check(slo, check), "interval": ARGO_INTERVAL, "count": ARGO_COUNT,
                "successCondition": f"result[0] <= {bound:g}", "failureCondition": f"result[0] > {bound:g}",
                "failureLimit": 0, "inconclusiveLimit": ARGO_COUNT - 1,
                "provider": {"prometheus": {"address": "{{args.prometheus-address}}", "query": query}}}

    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisTemplate",
            "metadata": {"name": slo_id(spec, slo), "labels": MANAGED},
            "spec": {"args": [{"name": "namespace"}, {"name": "canary-hash"}, {"name": "stable-hash"},
                              {"name": "prometheus-address", "value": DEFAULT_PROMETHEUS}],
                     "metrics": [metric(check, query, bound) for check, query, bound
                                 in checks(slo, ARGO_CANARY, ARGO_STABLE, golden_items)]}}


def flagger_templates(spec: Spec, slo: Slo, golden_items: int) -> list[dict[str, Any]]:
    """Flagger MetricTemplates, one per check (the Canary's analysis sets each one's bound)."""
    def template(check: str, query: str) -> dict[str, Any]:
        return {"apiVersion": "flagger.app/v1beta1", "kind": "MetricTemplate",
                "metadata": {"name": f"{slo_id(spec, slo)}-{check}", "labels": MANAGED},
                "spec": {"provider": {"type": "prometheus", "address": DEFAULT_PROMETHEUS}, "query": query}}

    return [template(check, query) for check, query, _ in checks(slo, FLAGGER_CANARY, FLAGGER_STABLE, golden_items)]


def flagger_metrics(spec: Spec, golden_items: int) -> list[dict[str, Any]]:
    """A Canary's `spec.analysis.metrics`: each template with its bound, checked every minute."""
    return [{"name": _check(slo, check), "templateRef": {"name": f"{slo_id(spec, slo)}-{check}"},
             "thresholdRange": {"max": bound}, "interval": ARGO_INTERVAL}
            for slo in judged(spec) for check, _, bound in checks(slo, FLAGGER_CANARY, FLAGGER_STABLE, golden_items)]


def render(spec: Spec, golden_items: int) -> dict[str, str]:
    """{relative path: text}: the AnalysisTemplates, the MetricTemplates, and the analysis for a Canary.
    `golden_items`: the size of the spec's golden set (the golden check's guard; read by the caller)."""
    header = (f"# Generated by `slo-sidecar generate` from {spec.source.rsplit('/', 1)[-1]}: the canary checks of "
              "each SLO (docs/rolling-out.md). Do not edit: change the spec and generate again.\n")
    slos = judged(spec)
    argo = "".join("---\n" + dump(argo_template(spec, slo, golden_items)) for slo in slos)
    flagger = "".join("---\n" + dump(template) for slo in slos
                      for template in flagger_templates(spec, slo, golden_items))
    analysis = dump({"analysis": {"metrics": flagger_metrics(spec, golden_items)}})
    return {"canary/argo-rollouts/analysis-templates.yaml": header + argo,
            "canary/flagger/metric-templates.yaml": header + flagger,
            "canary/flagger/canary-analysis.yaml": header + "# Merge into your Canary's spec.\n" + analysis}
