"""Mutation check of the alert-timing tests: each one-constant change to the rule generator, with the
committed files regenerated, must fail at least one test.

For each mutation: a copy of the tracked tree in a temporary directory, the constant changed, `slo-sidecar
generate` run into the committed directories, then the alert-timing tests. The unchanged copy runs first
and must pass. Prints one line per mutation and the tests that caught it; exits 1 if any went uncaught.

    .venv/bin/python scripts/alert_mutations.py [-k EXPR]   (about 2 minutes a mutation on 2 cores; -k workbooks_minute: 20 s)
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = ["tests/test_alert_timing.py", "tests/test_sloth_pages.py", "tests/test_recorded_windows.py",
         "tests/test_lab_replay.py", "tests/test_rules.py", "tests/test_sloth_reference.py"]
# (what changes, file, the text as it is, the text it becomes)
MUTATIONS = [
    ("page for: 1m -> 0s", "alerts/rules.py", 'PAGE_FOR = "1m"', 'PAGE_FOR = "0s"'),
    ("page for: 1m -> 2m", "alerts/rules.py", 'PAGE_FOR = "1m"', 'PAGE_FOR = "2m"'),
    ("ticket for: 10m -> 12m", "alerts/rules.py", 'TICKET_FOR = "10m"', 'TICKET_FOR = "12m"'),
    ("outage page for: 0s -> 1m", "alerts/rules.py", '"for": "0s",  # the 1-minute window', '"for": "1m",  # the 1-minute window'),
    ("page burn factor 14.4 -> 13", "slo_sidecar/spec/model.py", '("page", 3600, 300, 14.4)', '("page", 3600, 300, 13)'),
    ("outage window 2m -> 3m", "slo_sidecar/spec/model.py", "FAST_BURN_WINDOWS = (120, 60)", "FAST_BURN_WINDOWS = (180, 60)"),
]
GENERATE = ["-m", "slo_sidecar.app.cli", "generate", "--out", "generated/alerts", "--dashboards-out",
            "generated/dashboards", "--k8s", "generated/kubernetes"]


def copy_tree(into: Path) -> None:
    """The working tree's files git would commit (tracked, and new ones it does not ignore), into a new tree."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)


def failed_tests(tree: Path, keyword: str | None) -> tuple[int, list[str]]:
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", "-rf", *TESTS]
    if keyword:
        args += ["-k", keyword]
    done = subprocess.run(args, cwd=tree, capture_output=True, text=True)
    return done.returncode, re.findall(r"^FAILED (\S+)", done.stdout, re.MULTILINE)


def check(name: str, path: str, before: str, after: str, keyword: str | None) -> tuple[bool, list[str]]:
    with tempfile.TemporaryDirectory(prefix="alert-mutation-") as directory:
        tree = Path(directory)
        copy_tree(tree)
        if path:
            target = tree / path
            text = target.read_text()
            if text.count(before) != 1:
                raise SystemExit(f"{name}: {before!r} is not in {path} exactly once; update MUTATIONS")
            target.write_text(text.replace(before, after))
        subprocess.run([sys.executable, *GENERATE], cwd=tree, check=True, capture_output=True)
        returncode, failed = failed_tests(tree, keyword)
        if returncode not in (0, 1):  # 2-5: interrupted, an internal or usage error, no tests collected
            raise SystemExit(f"{name}: pytest exited with {returncode}")
        return returncode == 1, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", dest="keyword", help="pytest -k expression to narrow the tests")
    options = parser.parse_args()
    caught, failures = check("unchanged", "", "", "", options.keyword)
    print(f"unchanged: {'FAILED ' + ', '.join(failures) if caught else 'passes'}")
    if caught:
        return 1
    uncaught = 0
    for name, path, before, after in MUTATIONS:
        caught, failures = check(name, path, before, after, options.keyword)
        uncaught += not caught
        print(f"{name}: {'caught by ' + ', '.join(failures) if caught else 'NOT CAUGHT'}", flush=True)
    return 1 if uncaught else 0


if __name__ == "__main__":
    sys.exit(main())
