#!/usr/bin/env bash
# The demo command: set up .venv (idempotent), then run `slo-sidecar demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/slo-sidecar demo "$@"
