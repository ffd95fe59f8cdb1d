#!/usr/bin/env bash
# The test command: set up .venv (idempotent), then run the whole suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k protocol`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
