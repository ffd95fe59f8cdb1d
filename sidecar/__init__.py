"""The sidecar process beside the engine: scrapes it, derives what on-call needs, serves it on /metrics.

It never imports the engine; the two talk over HTTP only. Built so far: the
engine collector and the process around it. To come: the GPU (NVML) collector,
cost, and live SLO burn rates.
"""
