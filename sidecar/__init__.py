"""The sidecar process beside the engine: scrapes it, reads the GPUs, serves what on-call needs on /metrics.

It never imports the engine; the two talk over HTTP only. Built: the engine and
GPU collectors, cost, and the process around them. To come: live SLO burn rates.
"""
