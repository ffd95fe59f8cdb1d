"""Prometheus recording and alerting rules generated from the SLO spec. Not built yet."""
