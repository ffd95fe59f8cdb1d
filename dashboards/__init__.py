"""Grafana dashboards generated from the SLO spec. Not built yet."""
