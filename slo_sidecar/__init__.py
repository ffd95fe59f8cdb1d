"""slo-sidecar: SLO monitoring for vLLM inference pods, under one import name.

`slo_sidecar.spec` (the SLO spec core and wire contract) and `slo_sidecar.iokit` (I/O helpers) at the
bottom; `slo_sidecar.engine`, `.sidecar`, `.alerts` and `.dashboards` above them; `slo_sidecar.app`
(the command, demo, gate, lab) on top. docs/architecture.md draws the layers."""

from .spec import __version__

__all__ = ["__version__"]
