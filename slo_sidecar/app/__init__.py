"""slo-sidecar's application layer: the command, the demo, the load-test gate, the preview and the
process helpers. The top layer: the only package that imports every other one."""

from slo_sidecar.spec import __version__

__all__ = ["__version__"]
