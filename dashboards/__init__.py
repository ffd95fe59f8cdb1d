"""Grafana dashboards generated from the SLO spec (`slo-sidecar generate`), built with grafana-foundation-sdk."""
