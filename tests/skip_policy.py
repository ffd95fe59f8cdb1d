"""The suite may not skip silently: a skip whose reason is not listed here fails the run, naming the test.

A test that needs a tool the set-up installs (promtool, Prometheus, Chromium,
kubectl, the Jaeger environment) skips with a reason saying what is missing; on a
machine where `scripts/setup.sh` did its job none of them skips, and where it
could not, the run fails instead of passing with holes. Only reasons that no
set-up can change (this machine's hardware) are allowed.
"""

from __future__ import annotations

import pytest

NVIDIA_DRIVER_PRESENT = "this machine has an NVIDIA driver: the test is for the no-GPU path"
ALLOWED_SKIP_REASONS = frozenset({NVIDIA_DRIVER_PRESENT})

_refused: list[tuple[str, str]] = []


def skip_reason(report: pytest.TestReport) -> str:
    """The reason a skipped test gave, without pytest's "Skipped: " prefix."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = skip_reason(report)
        if reason not in ALLOWED_SKIP_REASONS:
            _refused.append((report.nodeid, reason))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _refused and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if not _refused:
        return
    terminalreporter.section("skips that are not allowed (the run fails)", red=True, bold=True)
    for nodeid, reason in _refused:
        terminalreporter.line(f"SKIPPED {nodeid}: {reason}")
    terminalreporter.line("Run `bash scripts/setup.sh` (as root, with apt-get) to install what they need; "
                          f"allowed reasons: {', '.join(sorted(ALLOWED_SKIP_REASONS))}")
