#!/usr/bin/env bash
# The demo command: set up .venv (idempotent), then run `slo-sidecar demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
SLO_SIDECAR_SKIP_CHROMIUM=1 bash scripts/setup.sh  # the demo takes no screenshots
exec .venv/bin/slo-sidecar demo "$@"
