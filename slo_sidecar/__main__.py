"""`python -m slo_sidecar ...` runs the `slo-sidecar` command."""

from .app.cli import main

raise SystemExit(main())
