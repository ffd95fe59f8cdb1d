"""`slo-sidecar budget`: each SLO's error budget left and the release policy's verdict, read from a Prometheus
that runs the generated rules; exit 1 while releases are frozen, for a CI pipeline's release step.

Exit codes: 0 releases may go (or no SLO has a policy), 1 frozen, 2 Prometheus could not be read or holds none
of the service's recordings (nothing to decide on: a pipeline should not take that for a yes).
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from dataclasses import dataclass

from slo_sidecar.spec.model import RELEASE_ALLOWED, RELEASE_ALLOWED_REASON, RELEASE_FROZEN

from .processes import get_json

BUDGET_LEFT = "slo:period_error_budget_remaining:ratio"
SLO_LABELS = ("sloth_service", "sloth_slo", "sloth_id", "sloth_window", "reason", "__name__")


class BudgetError(Exception):
    pass


@dataclass(frozen=True, order=True)
class Row:
    scope: str  # the service and its identity labels, e.g. llm namespace=prod model_name=m
    slo: str
    budget_left: float
    freezes: tuple[str, ...]  # the reasons this SLO holds releases back now


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prometheus", required=True, metavar="URL",
                        help="a Prometheus (or compatible API) that runs the generated rules")
    parser.add_argument("--service", help="only this service (the spec's `service`); default: every one")


def query(prometheus: str, expr: str) -> list[dict]:
    url = f"{prometheus.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    try:
        return get_json(url)["data"]["result"]
    except OSError as exc:
        raise BudgetError(f"{prometheus}: {exc}") from None
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:  # another status, or not its API's JSON
        raise BudgetError(f"{url}: {exc}") from None


def scope_of(labels: dict[str, str]) -> str:
    """The service and the identity labels its recordings carry (namespace, model_name, ...), sorted."""
    rest = " ".join(f"{key}={value}" for key, value in sorted(labels.items()) if key not in SLO_LABELS)
    return f"{labels.get('sloth_service', '?')} {rest}".strip()


def slo_of(labels: dict[str, str]) -> tuple[str, str]:
    """(scope, SLO) of an SLO recording's series."""
    return scope_of(labels), labels.get("sloth_slo", "?")


def read(prometheus: str, service: str | None) -> tuple[list[Row], dict[str, tuple[bool, str]]]:
    """(each SLO's row, {scope: (releases allowed, reason)}) from the recordings as Prometheus holds them now."""
    selector = "{" + (f'sloth_service="{service}"' if service else "") + "}"
    frozen: dict[tuple[str, str], list[str]] = {}
    for sample in query(prometheus, f"{RELEASE_FROZEN}{selector} == 1"):
        frozen.setdefault(slo_of(sample["metric"]), []).append(sample["metric"].get("reason", "?"))
    rows = sorted(Row(*slo_of(s["metric"]), float(s["value"][1]), tuple(sorted(frozen.get(slo_of(s["metric"]), ()))))
                  for s in query(prometheus, f"{BUDGET_LEFT}{selector}"))
    verdicts = {scope_of(s["metric"]): (float(s["value"][1]) == 1.0, s["metric"].get("reason", "?"))
                for s in query(prometheus, f"{RELEASE_ALLOWED}{selector}")}
    return rows, verdicts


def report(rows: list[Row], verdicts: dict[str, tuple[bool, str]]) -> tuple[str, int]:
    """The table and the exit code (pure)."""
    lines = [f"{'service':<36} {'SLO':<24} {'budget left':>12}  policy"]
    for row in rows:
        verdict = ("freezes releases: " + ", ".join(row.freezes)) if row.freezes else "-"
        lines.append(f"{row.scope:<36} {row.slo:<24} {row.budget_left:>12.1%}  {verdict}")
    if not verdicts:
        lines.append("no release policy in these rules (no SLO has `policy`): releases are not gated")
        return "\n".join(lines), 0
    for scope, (allowed, reason) in sorted(verdicts.items()):
        lines.append(f"{scope}: releases {'allowed' if allowed else 'FROZEN'}"
                     + ("" if reason == RELEASE_ALLOWED_REASON else f" ({reason})"))
    return "\n".join(lines), 0 if all(allowed for allowed, _ in verdicts.values()) else 1


def run(args: argparse.Namespace) -> int:
    try:
        rows, verdicts = read(args.prometheus, args.service)
    except BudgetError as exc:
        print(f"slo-sidecar budget: error: {exc}", file=sys.stderr)
        return 2
    if not rows:
        which = f"service {args.service!r}" if args.service else "any service"
        print(f"slo-sidecar budget: error: {args.prometheus} holds no {BUDGET_LEFT} for {which}: are the generated "
              "rules loaded, and has it scraped the engine?", file=sys.stderr)
        return 2
    text, code = report(rows, verdicts)
    print(text)
    return code
