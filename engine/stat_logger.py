"""`SloStatLogger`: vLLM's view of each finished request, for our per-request join (engine/request_join.py).

A stat-logger plugin (entry point group `vllm.stat_logger_plugins`), so vLLM's AsyncLLM loads it in the
API server's process and calls `record` on its event loop after each engine step. It only hands each
finished sequence's stats to the join: no I/O, nothing that could stall serving. Without the middleware
(no `--middleware slo_sidecar.engine.asgi.SloMiddleware`) there is nothing to join to, and it does nothing.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import vllm
from vllm.v1.metrics.loggers import StatLoggerBase

from . import instrumentation
from .request_join import EngineView

log = logging.getLogger(__name__)


class SloStatLogger(StatLoggerBase):
    def __init__(self, vllm_config: Any, engine_index: int = 0):
        self.engine_index = engine_index
        warning = instrumentation.unsupported_vllm_warning(vllm.__version__)
        if warning:
            log.warning(warning)

    def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
               engine_idx: int = 0) -> None:
        state = instrumentation.current()
        if state is None or iteration_stats is None or not iteration_stats.finished_requests:
            return
        now = time.monotonic()
        for finished in iteration_stats.finished_requests:
            if finished.request_id is None:
                continue
            state.engine_finished(finished.request_id, EngineView(
                queued_s=finished.queued_time, prefill_s=finished.prefill_time, decode_s=finished.decode_time,
                prompt_tokens=finished.num_prompt_tokens, generation_tokens=finished.num_generation_tokens,
                preemptions=finished.num_preemptions, cached_tokens=finished.num_cached_tokens, finished_at=now,
                finish_reason=str(finished.finish_reason)))

    def log_engine_initialized(self) -> None:
        pass
