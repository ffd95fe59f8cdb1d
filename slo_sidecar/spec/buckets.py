"""The histograms a latency SLI can read, and their bucket bounds as the engine exposes them.

A threshold between two bounds would make every tool interpolate silently, so
the spec reader accepts only a bound of these tables (or of `buckets` given in
the spec). Pure data.
"""

from __future__ import annotations

HTTP_DURATION_HISTOGRAM = "slo_engine_http_request_duration_seconds"  # the engine's; exemplars carry trace ids

# Bucket bounds of the histograms an SLI can use, as the engine exposes them. A latency
# threshold must be one of them: between two bounds, every tool silently interpolates.
KNOWN_BUCKETS: dict[str, tuple[float, ...]] = {
    "vllm:time_to_first_token_seconds": (
        0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
        80.0, 160.0, 640.0, 2560.0),
    "vllm:inter_token_latency_seconds": (
        0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0),
    "vllm:request_time_per_output_token_seconds": (
        0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0),
    "vllm:e2e_request_latency_seconds": (
        0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
        960.0, 1920.0, 7680.0),
    "vllm:request_queue_time_seconds": (
        0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
        960.0, 1920.0, 7680.0),
    # The engine's own HTTP histogram (engine/metrics.py uses this tuple).
    HTTP_DURATION_HISTOGRAM: (
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0),
}
HTTP_DURATION_BUCKETS = KNOWN_BUCKETS[HTTP_DURATION_HISTOGRAM]

# vLLM's histogram of each per-request latency the engine judges (model.MEASURES): what a
# histogram-sourced latency SLI reads, and what dashboards chart beside an exact one.
MEASURE_HISTOGRAMS = {
    "ttft": "vllm:time_to_first_token_seconds",
    "tpot": "vllm:request_time_per_output_token_seconds",
    "e2e": "vllm:e2e_request_latency_seconds",
    "queue": "vllm:request_queue_time_seconds",
}
