"""bench/sloth_rules.py against Sloth's own golden files: its rules are Sloth's, so a cost comparison
with them is a comparison with Sloth.

Sloth cannot run here; its integration tests' input and expected output (tests/fixtures/sloth/,
provenance in each file's header) are the reference. Every group and every rule is compared whole
(record/alert name, expr character for character, labels, annotations, and the absence of `for`),
with one exception our model cannot carry, named where it is made.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from slo_sidecar.alerts.rules import recording_groups
from bench.sloth_rules import go_float, prom_duration, sloth_rule_groups
from slo_sidecar.spec.load import DEFAULT_SPEC, load_spec
from slo_sidecar.spec.model import Spec

SLOTH = Path(__file__).resolve().parent / "fixtures" / "sloth"
RAW_SLO = "slo02"  # in-base.yaml's raw SLI

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool (Debian package prometheus) not installed")


def sloth_input(period: str = "30d") -> Spec:
    """in-base.yaml through our loader; `period` stands for Sloth's --default-slo-period flag (our
    Sloth reader gives every SLO Sloth's default, 30d)."""
    spec = load_spec(str(SLOTH / "in-base.yaml"))
    return dataclasses.replace(spec, slos=tuple(dataclasses.replace(slo, period=period) for slo in spec.slos))


def as_our_model_carries(group: str, rule: dict[str, Any]) -> dict[str, Any]:
    """Sloth's expected rule, less what our model cannot carry: our Sloth reader strips each query
    (slo_sidecar/spec/sloth.py `_query`), so a raw SLI written as a YAML block (`|`) loses its trailing
    newline, which Sloth keeps inside the parentheses it adds: `(sum(...)\\n/\\nsum(...)\\n)`. Only
    that whitespace is taken out, only for the raw SLI's per-window ratios; PromQL reads both alike."""
    expr = rule.get("expr", "")
    if group.endswith(f"-{RAW_SLO}") and "sli-recordings" in group and not expr.startswith("sum_over_time"):
        assert expr.startswith("(") and expr.endswith("\n)"), expr  # the one difference, and no other
        return {**rule, "expr": "(" + expr[1:-1].strip() + ")"}
    return rule


@pytest.mark.parametrize(("golden", "period"), [("out-base.yaml", "30d"), ("out-base-28d.yaml", "28d")])
def test_rules_are_sloths_golden_output(golden: str, period: str) -> None:
    expected = yaml.safe_load((SLOTH / golden).read_text())["groups"]
    rendered = sloth_rule_groups(sloth_input(period), version="v0.16.0")
    assert [g["name"] for g in rendered] == [g["name"] for g in expected]
    for got, want in zip(rendered, expected):
        assert [r.get("record") or r.get("alert") for r in got["rules"]] == \
            [r.get("record") or r.get("alert") for r in want["rules"]], got["name"]
        for rule, sloth in zip(got["rules"], want["rules"]):
            sloth = as_our_model_carries(want["name"], sloth)
            for key in ("record", "alert", "expr", "labels", "for", "annotations"):
                assert rule.get(key) == sloth.get(key), (got["name"], rule.get("record") or rule.get("alert"), key)
            assert rule == sloth  # nothing Sloth does not write, nothing left out
    # The exception above is only whitespace: 7 windows of the raw SLI.
    relaxed = [r for g in expected for r in g["rules"] if as_our_model_carries(g["name"], r) != r]
    assert len(relaxed) == 7


def test_go_number_and_duration_formatting() -> None:
    """What Go prints, which the thresholds and labels depend on (fmt %v/%g, FormatFloat 'f' -1,
    prometheus/common's model.Duration)."""
    assert [go_float(x) for x in (14.4, 6.0, 1.0, 0.95, 5.6000000000000005, 1e-4, 1e-5, 1e6, 123456.0)] == \
        ["14.4", "6", "1", "0.95", "5.6000000000000005", "0.0001", "1e-05", "1e+06", "123456"]
    assert [go_float(x, "f") for x in (99.9, 95.0, 99.95, 1e6)] == ["99.9", "95", "99.95", "1000000"]
    assert [prom_duration(s) for s in (300, 5400, 86400, 7 * 86400, 28 * 86400, 30 * 86400, 365 * 86400)] == \
        ["5m", "1h30m", "1d", "1w", "4w", "30d", "1y"]


def test_periods_sloth_has_no_windows_for_are_refused() -> None:
    with pytest.raises(ValueError, match="7d"):
        sloth_rule_groups(sloth_input("7d"))


_RATE = re.compile(r"rate\((.+?)\[(\w+)\]\)")


def raw_selectors(expr: str) -> set[tuple[str, str]]:
    """(series selector, range) of every rate() an expression reads off scraped series."""
    return set(_RATE.findall(expr))


@pytest.mark.parametrize("name", [slo.name for slo in load_spec(str(DEFAULT_SPEC)).slos
                                  if slo.sli.timeslices is None])  # Sloth has no time-slice SLIs
def test_native_slo_in_sloth_form_reads_what_our_rules_read(name: str) -> None:
    """A native SLO (slo_sidecar/spec/slo.yaml) rendered in Sloth's form reads, for every window Sloth
    records, the same scraped series as our own rules: at the same range where ours read that window
    off the counters, and where ours sum it from the 5m recordings instead (the long windows), the
    series ours read at 5m. The cost comparison compares the rules' form, not different data."""
    spec = load_spec(str(DEFAULT_SPEC))
    spec = dataclasses.replace(spec, slos=tuple(slo for slo in spec.slos if slo.name == name))
    sli_group = sloth_rule_groups(spec)[0]
    ours: dict[str, set[tuple[str, str]]] = {}  # range -> what ours read at it
    for group in (g for groups in recording_groups(spec, spec.slos[0]) for g in groups):
        for rule in group["rules"]:
            for selector, window in raw_selectors(rule["expr"]):
                ours.setdefault(window, set()).add((selector, window))
    windows = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"]
    assert [r["labels"]["sloth_window"] for r in sli_group["rules"]] == [*windows, "30d"]
    for rule, window in zip(sli_group["rules"], windows):
        selectors = raw_selectors(rule["expr"])
        assert selectors and {w for _, w in selectors} == {window}, rule["expr"]
        if window in ours:
            assert selectors == ours[window], window
        else:  # summed from our 5m recordings: the same series, read at 5m
            assert {s for s, _ in selectors} == {s for s, _ in ours["5m"]}, window
    # The period's ratio reads no scraped series in either: both sum recorded 5m series.
    assert raw_selectors(sli_group["rules"][-1]["expr"]) == set()
    assert "30d" not in ours


@needs_promtool
def test_promtool_accepts_the_rendered_rules(tmp_path: Path) -> None:
    files = []
    for name, spec in (("sloth-in-base", sloth_input()), ("native-default", load_spec(str(DEFAULT_SPEC)))):
        path = tmp_path / f"{name}.rules.yaml"
        path.write_text(yaml.safe_dump({"groups": sloth_rule_groups(spec)}, sort_keys=False))
        files.append(str(path))
    result = subprocess.run(["promtool", "check", "rules", *files], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
