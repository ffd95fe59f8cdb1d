"""`validate --baseline URL --canary URL`: the two-proportion test against arithmetic done here by hand, and two
real engines given the same requests at once: the same engine on both sides is not worse; an engine failing
half its requests is, on availability, and the command names it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from slo_sidecar.app.compare import compare, two_proportion_z
from slo_sidecar.app.gate import Criterion
from tests.conftest import API_KEY

pytestmark = pytest.mark.engine


def test_the_z_test_is_the_textbook_arithmetic():
    """30 bad of 100 against 15 of 100: pooled 45/200 = 0.225; standard error sqrt(0.225 x 0.775 x (1/100 + 1/100))
    = 0.059055; z = 0.15 / 0.059055 = 2.5400; one-sided p = 1 - Phi(2.54) = 0.00554 (normal table)."""
    z, p = two_proportion_z(30, 100, 15, 100)
    assert z == pytest.approx(2.5400, abs=1e-4) and p == pytest.approx(0.00554, abs=1e-5)
    assert two_proportion_z(15, 100, 30, 100)[1] == pytest.approx(1 - 0.00554, abs=1e-5)  # better: far from worse
    assert two_proportion_z(0, 50, 0, 70) == (0.0, 0.5)  # nothing bad on either side: nothing to tell apart


def criterion(slo: str, good: float, total: float, passed: bool | None = True) -> Criterion:
    return Criterion(slo, "server", ">= 99% good", f"{good}/{total}", passed, good=good, total=total)


def test_worse_needs_the_bonferroni_bound_and_nothing_else():
    """Two criteria tested: each needs p < 0.025. 30 vs 15 bad of 100 (p 0.0055) is worse; 22 vs 12 of 100
    (pooled 0.17, se 0.05313, z 1.882, p 0.0299) is not, though it would be on its own at 0.05. A canary missing
    an SLO the baseline meets is not worse by that alone (3 bad of 60 against 0: pooled 0.025, se 0.028504,
    z 1.754, p 0.0397 > 0.025): the same engine on both sides does that by chance."""
    baseline = [criterion("availability", 85, 100), criterion("ttft", 88, 100)]
    canary = [criterion("availability", 70, 100), criterion("ttft", 78, 100)]
    verdicts = {c.slo: (round(c.z, 3), c.worse) for c in compare(baseline, canary)}
    assert verdicts == {"availability": (2.54, True), "ttft": (1.882, False)}
    baseline = [criterion("availability", 60, 60), criterion("ttft", 60, 60)]
    failed = [criterion("availability", 57, 60, passed=False), criterion("ttft", 60, 60)]
    availability = compare(baseline, failed)[0]
    assert availability.z == pytest.approx(1.754, abs=1e-3) and availability.p_value == pytest.approx(0.0397, abs=1e-4)
    assert (availability.worse, availability.baseline_passed, availability.canary_passed) == (False, True, False)


def validate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slo_sidecar.app.cli", "validate", "--api-key", API_KEY,
                           "--requests", "60", "--concurrency", "2", "--max-tokens", "8", "--report", "", "--quiet",
                           *args], capture_output=True, text=True, timeout=300)


def test_the_same_engine_is_not_worse_and_a_failing_one_is_named(engine, lora_engine):
    same = validate("--baseline", engine.url, "--canary", engine.url)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "PASS: the canary is not worse" in same.stdout
    lora_engine.set_faults(error_ratio=0.5)
    try:
        failing = validate("--baseline", engine.url, "--canary", lora_engine.url)
    finally:
        lora_engine.set_faults(error_ratio=0.0)
    assert failing.returncode == 1, failing.stdout + failing.stderr
    verdict = failing.stdout.strip().splitlines()[-1]
    assert verdict.startswith("FAIL: the canary is worse on ") and "availability" in verdict, verdict


@pytest.mark.parametrize("args, reason", [
    (("--baseline", "http://127.0.0.1:1"), "--canary is needed with it"),
    (("--canary", "http://127.0.0.1:1"), "--baseline is needed with it"),
    (("--baseline", "http://127.0.0.1:1", "--canary", "http://127.0.0.1:2", "--url", "http://127.0.0.1:3"),
     "--url does not go with --baseline and --canary"),
])
def test_a_half_given_comparison_exits_2_naming_the_flag(args, reason):
    result = subprocess.run([sys.executable, "-m", "slo_sidecar.app.cli", "validate", *args], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and reason in result.stderr and "Traceback" not in result.stderr, result.stderr
