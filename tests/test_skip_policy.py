"""The suite cannot skip silently: a run with a skip for a reason not allowed fails and names the test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO
from tests.skip_policy import NVIDIA_DRIVER_PRESENT

TESTS = '''
import pytest

def test_runs():
    assert True

def test_skips():
    pytest.skip({reason!r})

@pytest.mark.xfail(reason="known")
def test_expected_failure():
    assert False
'''


def run_pytest(tmp_path: Path, reason: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(TESTS.format(reason=reason))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.skip_policy", "-q", "-p", "no:cacheprovider",
                           str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_a_skip_for_a_missing_tool_fails_the_run_and_names_the_test(tmp_path):
    result = run_pytest(tmp_path, "needs promtool (Debian package prometheus)")
    assert result.returncode == 1, result.stdout
    assert "skips that are not allowed" in result.stdout
    assert "test_sample.py::test_skips: needs promtool (Debian package prometheus)" in result.stdout
    assert "1 passed, 1 skipped, 1 xfailed" in result.stdout


def test_an_allowed_reason_passes(tmp_path):
    result = run_pytest(tmp_path, NVIDIA_DRIVER_PRESENT)
    assert result.returncode == 0, result.stdout
    assert "not allowed" not in result.stdout
