"""The capacity report's wire format: one dataclass, one writer, one reader. `slo-sidecar capacity --json`
writes it; the sidecar's `--capacity`, the capacity chart and bench/autoscale_sim.py read it. Pure: values
in, text out, and text in, checked values out, one reason per error.

    {"version": "slo-sidecar/capacity/v1", "url": ..., "spec": ..., "load": {...}, "steps": [...],
     "capacity_rps": 3.1}
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

CAPACITY_VERSION = "slo-sidecar/capacity/v1"


@dataclass(frozen=True)
class SloAttainment:
    objective: float  # percent
    attainment: float | None  # share of good events, 0-1; None: nothing judged
    events: int
    needed: int  # events to show the objective at all: one bad in `needed` is exactly the budget
    passed: bool | None  # None: fewer events than `needed`, or none
    view: str  # "server" (the engine's counters) or "client"


@dataclass(frozen=True)
class Step:
    rate_rps: float
    duration_s: float
    sent: int
    achieved_rps: float  # requests answered (well or not) per second of the step
    slos: dict[str, SloAttainment]
    latency: dict[str, float | None]  # p90 of each measure over the step, from vLLM's histograms (capped as
    # the sidecar caps it: never above 10x the mean)
    headroom: float | None  # the worst p90 / target of the spec's exact targets (1.0: at the target)
    passed: bool | None  # every judged objective held; None: none could be judged
    # Requests waiting in vLLM's queue on average, by Little's law: arrival rate x mean queue time.
    queue_depth_mean: float | None = None
    confirms: bool = False  # the confirmation of the capacity found: twice as long, other arrival times

    @property
    def unjudged(self) -> list[str]:
        return [name for name, slo in self.slos.items() if slo.passed is None]


@dataclass(frozen=True)
class CapacityReport:
    url: str
    spec: str
    load: dict[str, Any]  # how the load was made: arrivals, lengths, seed
    steps: tuple[Step, ...]  # by rate
    capacity_rps: float | None  # None: the lowest rate already missed an objective
    version: str = field(default=CAPACITY_VERSION)

    def usable_capacity_rps(self) -> float:
        """The highest rate at which the pod met every SLO; ValueError where the report found none."""
        if self.capacity_rps is None:
            raise ValueError("capacity_rps: null (the measurement found no rate that meets every SLO: "
                             "rerun `slo-sidecar capacity` at lower rates)")
        return self.capacity_rps


# --- the writer -------------------------------------------------------------------------------------

def to_json(report: CapacityReport) -> str:
    steps = [{**asdict(step), "unjudged": step.unjudged} for step in sorted(report.steps, key=lambda s: s.rate_rps)]
    return json.dumps({"version": report.version, "url": report.url, "spec": report.spec, "load": report.load,
                       "steps": steps, "capacity_rps": report.capacity_rps}, indent=2) + "\n"


# --- the reader -------------------------------------------------------------------------------------

def from_json(text: str) -> CapacityReport:
    """The report, every field checked; ValueError naming the field and the reason otherwise."""
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
    if "capacity_rps" not in data:
        raise ValueError("capacity_rps: missing")
    capacity = None if data["capacity_rps"] is None else _positive(data["capacity_rps"], "capacity_rps")
    steps = _list(data.get("steps", []), "steps")
    return CapacityReport(_text(data.get("url", ""), "url"), _text(data.get("spec", ""), "spec"),
                          _object(data.get("load", {}), "load"),
                          tuple(_step(step, f"steps[{i}]") for i, step in enumerate(steps)), capacity)


def _step(data: Any, where: str) -> Step:
    data = _object(data, where)
    try:
        slos = {str(name): _attainment(slo, f"{where}.slos.{name}")
                for name, slo in _object(data["slos"], f"{where}.slos").items()}
        latency = {str(name): _optional(value, f"{where}.latency.{name}")
                   for name, value in _object(data.get("latency", {}), f"{where}.latency").items()}
        return Step(_positive(data["rate_rps"], f"{where}.rate_rps"),
                    _number(data["duration_s"], f"{where}.duration_s"), _count(data["sent"], f"{where}.sent"),
                    _number(data["achieved_rps"], f"{where}.achieved_rps"), slos, latency,
                    _optional(data.get("headroom"), f"{where}.headroom"),
                    _verdict(data.get("passed"), f"{where}.passed"),
                    _optional(data.get("queue_depth_mean"), f"{where}.queue_depth_mean"),
                    data.get("confirms", False) is True)
    except KeyError as missing:
        raise ValueError(f"{where}.{missing.args[0]}: missing") from None


def _attainment(data: Any, where: str) -> SloAttainment:
    data = _object(data, where)
    try:
        return SloAttainment(_number(data["objective"], f"{where}.objective"),
                             _optional(data.get("attainment"), f"{where}.attainment"),
                             _count(data["events"], f"{where}.events"), _count(data["needed"], f"{where}.needed"),
                             _verdict(data.get("passed"), f"{where}.passed"), _text(data["view"], f"{where}.view"))
    except KeyError as missing:
        raise ValueError(f"{where}.{missing.args[0]}: missing") from None


def _finite(value: Any) -> bool:
    try:
        return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(float(value))
    except OverflowError:  # an integer of 400 digits
        return False


def _number(value: Any, where: str) -> float:
    if not _finite(value):
        raise ValueError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _positive(value: Any, where: str) -> float:
    if not _finite(value) or value <= 0:
        raise ValueError(f"{where}: expected a number > 0, got {value!r}")
    return float(value)


def _optional(value: Any, where: str) -> float | None:
    return None if value is None else _number(value, where)


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where}: expected an integer >= 0, got {value!r}")
    return value


def _verdict(value: Any, where: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{where}: expected true, false or null, got {value!r}")
    return value


JSON_TYPES = {str: "a string", dict: "an object", list: "a list"}


def _of_type(value: Any, kind: type, where: str) -> Any:
    if not isinstance(value, kind):
        raise ValueError(f"{where}: expected {JSON_TYPES[kind]}, got {value!r}")
    return value


def _text(value: Any, where: str) -> str:
    return _of_type(value, str, where)


def _object(value: Any, where: str) -> dict:
    return _of_type(value, dict, where)


def _list(value: Any, where: str) -> list:
    return _of_type(value, list, where)
