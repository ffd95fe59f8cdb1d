"""A laboratory: replays of synthetic metric histories through the real Prometheus and promtool."""
