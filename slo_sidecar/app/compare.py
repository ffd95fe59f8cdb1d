"""Canary against baseline on the same load: each SLO's share of good events on both, and whether the canary's
share of bad events is higher than the baseline's by more than chance (pure; `validate --baseline --canary`).

The test is the one-sided two-proportion z-test: with b_c bad of n_c canary events and b_b of n_b baseline
events, the pooled share p = (b_c + b_b) / (n_c + n_b), z = (b_c/n_c - b_b/n_b) / sqrt(p (1 - p) (1/n_c + 1/n_b)),
and the canary is worse when z's one-sided p-value, 1 - Phi(z), is under ALPHA / m, m the number of criteria
compared (Bonferroni): a healthy canary is called worse on any of them by chance at most 1 time in 20, not 1 in
20 per criterion. With no bad event on either side there is nothing to tell apart: z = 0.

Only the test calls a canary worse. A canary that misses an SLO the baseline meets is not worse by that alone:
on a few hundred requests one side crosses an objective by chance (3 failures of 60 against none, the same
engine on both sides, p 0.04: a CI run caught exactly that). Each side's own verdict is still in the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

ALPHA = 0.05  # for all the criteria together (family-wise): a canary worse by chance alone, 1 time in 20


@dataclass(frozen=True)
class Comparison:
    slo: str
    view: str
    tenant: str
    baseline: str  # as the gate's table shows each side
    canary: str
    z: float | None  # None: one side has no events to compare
    p_value: float | None
    baseline_passed: bool | None  # each side's own verdict against the objective, as the gate gives it
    canary_passed: bool | None
    worse: bool  # the canary's bad share is higher than the baseline's, p < ALPHA / m


def two_proportion_z(bad_canary: float, total_canary: float, bad_baseline: float, total_baseline: float
                     ) -> tuple[float, float]:
    """(z, one-sided p-value) that the canary's bad share exceeds the baseline's."""
    pooled = (bad_canary + bad_baseline) / (total_canary + total_baseline)
    if pooled in (0.0, 1.0):
        return 0.0, 0.5
    error = math.sqrt(pooled * (1 - pooled) * (1 / total_canary + 1 / total_baseline))
    z = (bad_canary / total_canary - bad_baseline / total_baseline) / error
    return z, 1 - NormalDist().cdf(z)


def compare(baseline: list, canary: list) -> list[Comparison]:
    """Each criterion both runs judged (the gate's Criterion, matched by SLO, view and tenant)."""
    by_key = {(c.slo, c.view, c.tenant): c for c in baseline}
    pairs = [(mine, by_key[(mine.slo, mine.view, mine.tenant)]) for mine in canary
             if (mine.slo, mine.view, mine.tenant) in by_key]
    testable = [bool(mine.total and theirs.total and mine.good is not None and theirs.good is not None)
                for mine, theirs in pairs]
    alpha = ALPHA / max(1, sum(testable))
    out = []
    for (mine, theirs), test in zip(pairs, testable):
        z = p_value = None
        if test:
            z, p_value = two_proportion_z(mine.total - mine.good, mine.total, theirs.total - theirs.good, theirs.total)
        worse = p_value is not None and p_value < alpha
        out.append(Comparison(mine.slo, mine.view, mine.tenant, theirs.measured, mine.measured, z, p_value,
                              theirs.passed, mine.passed, worse))
    return out


def side(measured: str, passed: bool | None) -> str:
    """A side's share with its own verdict: `97.50% of 120 (fail)`."""
    return measured if passed is None else f"{measured} ({'pass' if passed else 'fail'})"


def table(comparisons: list[Comparison]) -> str:
    lines = [f"{'SLO':<22} {'view':<7} {'baseline':<31} {'canary':<31} {'z':>6} {'p':>7}  verdict"]
    for c in comparisons:
        z = "" if c.z is None else f"{c.z:.2f}"
        p = "" if c.p_value is None else f"{c.p_value:.3f}"
        name = f"{c.tenant}/{c.slo}" if c.tenant else c.slo
        lines.append(f"{name:<22} {c.view:<7} {side(c.baseline, c.baseline_passed):<31} "
                     f"{side(c.canary, c.canary_passed):<31} {z:>6} {p:>7}  "
                     + ("CANARY WORSE" if c.worse else "not worse"))
    return "\n".join(lines)
