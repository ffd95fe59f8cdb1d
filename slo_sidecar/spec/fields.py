"""Reading a spec's fields, shared by both formats: each error names the file, line, field and reason.

Pure code over a located YAML document (`yaml_tree.Located`).
"""

from __future__ import annotations

import re
from typing import Any

from .model import AlertTier, Matcher, Slo, duration_label
from .yaml_tree import Located, Path_, YamlError, dotted

DEFAULT_SEVERITY = {"page": "critical", "ticket": "warning"}
DEFAULT_MIN_EVENTS = 0  # no floor above the guard each alert derives (model.event_guard)
SLO_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


class SpecError(YamlError):
    """A spec that cannot be used: the command prints it and exits 2."""


class FieldReader:
    """Walks the located document, raising SpecError at the first problem."""

    def __init__(self, doc: Located):
        self.doc = doc

    def fail(self, path: Path_, reason: str) -> SpecError:
        return SpecError(self.doc.where(path), dotted(path) or "(file)", reason)

    def mapping(self, value: Any, path: Path_, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping with {', '.join(allowed)}")
        for key in value:
            if key not in allowed:
                raise self.fail((*path, key), f"unknown field; expected one of {', '.join(allowed)}")
        for key in required:
            if key not in value:
                raise self.fail(path, f"missing field {key!r}")
        return value

    def string(self, value: Any, path: Path_) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, f"expected a non-empty string, got {value!r}")
        return value

    def labels(self, value: Any, path: Path_) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, "expected a mapping of label: value")
        for key, item in value.items():
            if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", str(key)):
                raise self.fail((*path, key), "not a valid Prometheus label name")
            if not isinstance(item, (str, int, float)) or isinstance(item, bool):
                raise self.fail((*path, key), f"expected a string, got {item!r}")
        return {str(k): str(v) for k, v in value.items()}

    def matchers(self, value: Any, path: Path_) -> tuple[Matcher, ...]:
        if not isinstance(value, list):
            raise self.fail(path, 'expected a list of label matchers like code=~"5.."')
        if not value:
            raise self.fail(path, "empty selector: leave the field out to select every series")
        found = []
        for i, text in enumerate(value):
            try:
                found.append(Matcher.parse(text))
            except ValueError as exc:
                raise self.fail((*path, i), str(exc)) from None
        return tuple(found)

    def number(self, value: Any, path: Path_, low: float, high: float, what: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value < high:
            raise self.fail(path, f"expected {what}, got {value!r}")
        return float(value)

    def slo_name(self, value: Any, path: Path_) -> str:
        name = self.string(value, path)
        if not SLO_NAME.match(name):
            raise self.fail(path, "expected lower case letters, digits, '-' and '_', starting "
                                  f"with a letter, got {name!r}")
        return name

    def objective(self, value: Any, path: Path_) -> float:
        return self.number(value, path, 0, 100, "a percentage strictly between 0 and 100, like 99.9")


def alert_name(slo_name: str) -> str:
    """The default alert name: availability -> AvailabilitySLO, e2e-latency -> E2eLatencySLO."""
    return "".join(part.capitalize() for part in re.split(r"[-_]", slo_name)) + "SLO"


def check_alerts_can_fire(reader: FieldReader, slo: Slo, path: Path_) -> None:
    """A burn factor times the budget above 1 needs more than every request to fail."""
    for alert in slo.burn_alerts():
        tier: AlertTier = getattr(slo, alert.tier)
        needed = alert.factor * slo.error_budget
        if tier.enabled and needed > 1:
            raise reader.fail((*path, "objective"), (
                f"the {alert.tier} alert over {duration_label(alert.long_s)} fires at a {alert.factor:g}x burn, "
                f"an error ratio of {needed:.3g}: above 1, so it can never fire for a {slo.objective:g}% "
                f"objective; raise the objective or set alerting.{alert.tier}.enabled: false"))
