"""Prometheus recording and alerting rules generated from the SLO spec (`slo-sidecar generate`)."""
