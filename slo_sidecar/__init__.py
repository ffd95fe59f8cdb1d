"""slo-sidecar: observability and SLO monitoring for LLM inference pods running vLLM."""

__version__ = "0.1.0"
