"""The fuzz suite (tests/test_fuzz_engine.py) for many more examples than CI runs, with a tally.

Runs pytest on the fuzz tests with SLO_FUZZ_EXAMPLES set, then prints the examples tried per test,
the status codes seen, the 5xx answers (the goal: 0) and the tracebacks in the engine's log (0).

    .venv/bin/python bench/fuzz.py [--examples 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=3000, help="examples per fuzz test (CI: 150)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="slo-sidecar-fuzz-") as workdir:
        report = Path(workdir) / "fuzz.jsonl"
        env = {**os.environ, "SLO_FUZZ_EXAMPLES": str(args.examples), "SLO_FUZZ_REPORT": str(report)}
        result = subprocess.run([sys.executable, "-m", "pytest", "tests/test_fuzz_engine.py", "-q", "-p",
                                 "no:cacheprovider"], cwd=REPO, env=env)
        rows = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    codes: Counter = Counter()
    for row in rows:
        codes.update(row["codes"])
        print(f"{row['test']}: {row['examples']} examples in {row['seconds']} s; codes {row['codes']}; "
              f"tracebacks {row['tracebacks']}")
    fives = sum(n for code, n in codes.items() if code.startswith("5"))
    print(f"total: {sum(codes.values())} examples, 5xx {fives}, tracebacks {sum(r['tracebacks'] for r in rows)}, "
          f"pytest exit {result.returncode}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
