"""`slo-sidecar sidecar`: one asyncio loop, each collector on its own interval and timeout.

A scrape of the sidecar's /metrics never waits on a collector: every collector
stores its last completed families, and the exposition reads those. A failing
collector is counted and reported down, and the process carries on. Its last good
values stay while younger than stale_after_s (one failed scrape is not an
outage), then are withdrawn: alerts and the HPA see no data, never a frozen number.
Nor can one collector fail the whole /metrics: each is guarded (guard.py), and a
broken state file or a failed save of it costs the SLO windows' history at worst,
never the process (slo_state.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from aiohttp import web
from prometheus_client import (
    Counter,
    Gauge,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder

from iokit.serving import listen
from slo_spec.load import DEFAULT_SPEC, SpecError, load_spec
from slo_spec.model import Spec

from .collector import CollectError, Collector
from .config import ConfigError, SidecarConfig, add_arguments, load_config
from .cost import CostCollector, TenantTokenRates, TenantTokens
from .engine_collector import EngineCollector, ScrapeReader
from .engine_processes import engine_pids
from .gpu_collector import GpuCollector
from .gpu_families import PodLabels
from .guard import GuardedExposition
from .headroom import REQUEST_RATE, Headroom, HeadroomCollector, HeadroomReader, exact_targets
from .probe import Prober
from .slo_families import SloCollector
from .slo_state import SloStateFile
from .slo_tracker import SloTracker

log = logging.getLogger("sidecar")


@dataclass
class CollectorState:
    families: list[Metric] = field(default_factory=list)
    last_success: float | None = None  # wall clock
    last_error: str | None = None
    failures: int = 0  # in a row

    @property
    def up(self) -> bool:
        return self.last_success is not None and self.last_error is None

    def fresh(self, now: float, max_age_s: float) -> bool:
        return self.last_success is not None and now - self.last_success <= max_age_s


class SnapshotCollector:
    """prometheus_client custom collector: yields the families collector `name` last stored, while fresh."""

    def __init__(self, sidecar: "Sidecar", name: str):
        self.sidecar = sidecar
        self.name = name

    def collect(self) -> Iterable[Metric]:
        if self.sidecar.is_fresh(self.name):
            yield from self.sidecar.states[self.name].families


class Sidecar:
    def __init__(self, config: SidecarConfig, collectors: list[Collector], exposition: GuardedExposition):
        self.config = config
        self.collectors = collectors
        self.exposition = exposition
        self.states = {c.name: CollectorState() for c in collectors}
        # Values older than stale_after_s are withdrawn; a collector polled less often keeps
        # its values for two of its intervals, so they do not blink between two good runs.
        self.max_age_s = {c.name: max(config.stale_after_s, 2 * c.interval_s) for c in collectors}
        for collector in collectors:  # one guard each: broken families of one leave the others served
            exposition.add(collector.name, SnapshotCollector(self, collector.name))
        registry = exposition.group("sidecar")
        # For leak hunting (bench/soak.py): read at scrape time, on the event loop.
        Gauge("sidecar_event_loop_tasks", "asyncio tasks alive in the sidecar's event loop.",
              registry=registry).set_function(_tasks_alive)
        self.up = Gauge("sidecar_collector_up", "1 when the collector's last run succeeded.", ["collector"],
                        registry=registry)
        self.duration = Gauge("sidecar_collector_duration_seconds", "How long the collector's last run took.",
                              ["collector"], registry=registry)
        self.last_success = Gauge("sidecar_collector_last_success_timestamp_seconds",
                                  "When the collector last succeeded (Unix time).", ["collector"], registry=registry)
        self.errors = Counter("sidecar_collector_errors", "Failed collector runs, by reason.",
                              ["collector", "reason"], registry=registry)
        self.engine_up = Gauge("sidecar_engine_up", "1 when the engine's last scrape succeeded, else 0.",
                               registry=registry)
        self.engine_stale = Gauge("sidecar_engine_stale",
                                  "1 when the last good engine values are older than stale_after_s, and so "
                                  "withdrawn.", registry=registry)
        self.engine_stale.set_function(self._engine_is_stale)
        # The gauges read the collectors' state at scrape time, so they cannot disagree with /health.
        for collector in collectors:
            state = self.states[collector.name]
            self.up.labels(collector.name).set_function(lambda state=state: float(state.up))
            self.last_success.labels(collector.name).set_function(lambda state=state: state.last_success or 0.0)
            for reason in (*collector.error_reasons, "timeout", "internal"):
                self.errors.labels(collector.name, reason)
        if "engine" in self.states:
            self.engine_up.set_function(lambda: float(self.states["engine"].up))

    def is_fresh(self, name: str) -> bool:
        """Whether collector `name`'s last good values are young enough to serve."""
        return self.states[name].fresh(time.time(), self.max_age_s[name])

    def _engine_is_stale(self) -> float:
        return 0.0 if "engine" in self.states and self.is_fresh("engine") else 1.0

    async def run_collector(self, collector: Collector) -> None:
        state = self.states[collector.name]
        while True:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(collector.timeout_s):
                    state.families = await collector.collect()
                state.last_success, state.last_error, state.failures = time.time(), None, 0
            except (CollectError, TimeoutError) as exc:
                reason = exc.reason if isinstance(exc, CollectError) else "timeout"
                self._failed(collector.name, state, reason, str(exc) or reason)
            except Exception as exc:  # a collector bug must not take the sidecar down
                log.exception("collector %s failed", collector.name)
                self._failed(collector.name, state, "internal", repr(exc))
            elapsed = time.perf_counter() - started
            self.duration.labels(collector.name).set(elapsed)
            await asyncio.sleep(max(0.0, retry_delay(collector, state.failures) - elapsed))

    def _failed(self, name: str, state: CollectorState, reason: str, detail: str) -> None:
        if state.last_error is None:  # once per outage, not every interval
            log.warning("collector %s down: %s", name, detail)
        state.last_error = detail
        state.failures += 1
        self.errors.labels(name, reason).inc()

    # --- HTTP ------------------------------------------------------------------------------------

    async def metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        response = web.Response(body=self.exposition.encode(encoder))
        response.headers["Content-Type"] = content_type
        return response

    async def health(self, request: web.Request) -> web.Response:
        now = time.time()
        collectors = {
            name: {"up": state.up,
                   "last_success_age_s": None if state.last_success is None else round(now - state.last_success, 3),
                   "last_error": state.last_error}
            for name, state in self.states.items()
        }
        # The sidecar itself is alive whatever its collectors say: a dead engine must not restart it.
        status = "ok" if all(c["up"] for c in collectors.values()) else "degraded"
        return web.json_response({"status": status, "collectors": collectors})

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/health", self.health)
        return app


def _tasks_alive() -> float:
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:  # no event loop runs in this thread (a scrape from a test)
        return 0.0


def retry_delay(collector: Collector, failures: int) -> float:
    """The interval while all is well; after failures, doubling up to the collector's backoff_max_s."""
    if failures == 0:
        return collector.interval_s
    return max(collector.interval_s, min(collector.interval_s * 2 ** (failures - 1), collector.backoff_max_s))


def build_collectors(config: SidecarConfig, tracker: SloTracker | None = None, readers: Sequence[ScrapeReader] = ()
                     ) -> tuple[EngineCollector, GpuCollector]:
    def find_engine() -> set[int]:
        return engine_pids(config.engine_process_pattern, config.engine_pid)

    if config.fake_gpu:
        from . import fake_nvml

        log.warning("serving %d FAKE GPU(s) (fake_gpu): the GPU values are made up, not read from NVML",
                    config.fake_gpu)
        # The fake GPUs' memory is held by the engine's real process, as vLLM's engine core would hold it.
        nvml = fake_nvml.fake_gpus(config.fake_gpu, processes=fake_nvml.engine_holds_memory(find_engine))
    else:
        import pynvml as nvml
    engine = EngineCollector(config, tracker, readers=readers)
    gpu = GpuCollector(nvml, interval_s=config.gpu_interval_s, timeout_s=config.gpu_timeout_s,
                       backoff_max_s=config.gpu_backoff_max_s,
                       pod=PodLabels(config.pod, config.namespace, config.container), engine_pids=find_engine,
                       dcgm_compat=config.dcgm_compat, hostname=os.environ.get("NODE_NAME"),
                       scope=config.gpu_scope, engine_gpus=lambda: engine.engine_gpus)
    return engine, gpu


def generation_rate(engine: EngineCollector) -> float | None:
    return None if engine.last_stats is None else engine.last_stats.rates.get("generation_tokens_per_second")


def build_cost_collector(config: SidecarConfig, sidecar: "Sidecar", engine: EngineCollector,
                         tenants: TenantTokens, gpus: Callable[[], int]) -> CostCollector:
    """The cost figures, pod and per tenant; what comes from the engine is withdrawn once its values are stale."""
    if config.gpu_hourly_usd is None:
        raise ValueError("cost figures need gpu_hourly_usd")

    def tenant_rates() -> Mapping[str, TenantTokenRates] | None:
        return tenants.rates if sidecar.is_fresh("engine") else None

    return CostCollector(
        config.gpu_hourly_usd, gpus=gpus,
        generation_rate=lambda: generation_rate(engine) if sidecar.is_fresh("engine") else None,
        tenant_rates=tenant_rates, prompt_token_weight=config.prompt_token_weight)


def request_rate(engine: EngineCollector) -> float | None:
    return None if engine.last_stats is None else engine.last_stats.rates.get(REQUEST_RATE)


def build_headroom_collector(config: SidecarConfig, spec: Spec, sidecar: "Sidecar", engine: EngineCollector
                             ) -> HeadroomCollector:
    """The SLO headroom, fed after each engine scrape with the snapshot the engine collector has just derived,
    and the capacity utilisation; both withdrawn once the engine's values are stale."""
    headroom = Headroom(exact_targets(spec), time_constant_s=config.headroom_time_constant_s)
    engine.add_reader(HeadroomReader(headroom, lambda: engine.last_stats, window_s=config.rate_window_s))
    return HeadroomCollector(headroom, fresh=lambda: sidecar.is_fresh("engine"),
                             request_rate=lambda: request_rate(engine), capacity_rps=config.capacity_rps)


async def serve(config: SidecarConfig, spec: Spec) -> int:
    disable_created_metrics()  # *_created series only add noise to the sidecar's small exposition
    exposition = GuardedExposition()
    ProcessCollector(registry=exposition.group("process"))
    PlatformCollector(registry=exposition.group("process"))
    tracker = SloTracker(spec)
    state = None
    if config.slo_state_file:
        state = SloStateFile(Path(config.slo_state_file), tracker, exposition.group("sidecar"))
        state.load(time.time())
    exposition.add("slo", SloCollector(tracker))
    tenants = TenantTokens(window_s=config.rate_window_s)  # the tenants' token rates, for their cost
    engine, gpu = build_collectors(config, tracker, [tenants] if config.gpu_hourly_usd is not None else [])
    probes: list[Collector] = [Prober(config, tracker)] if config.probe_interval_s > 0 else []
    sidecar = Sidecar(config, [engine, gpu, *probes], exposition)
    if config.gpu_hourly_usd is not None:
        exposition.add("cost", build_cost_collector(config, sidecar, engine, tenants,
                                                    gpus=lambda: gpu.gpu_count or config.gpus))
    exposition.add("headroom", build_headroom_collector(config, spec, sidecar, engine))
    if config.capacity_rps is not None:
        log.info("capacity report %s: %.3g req/s at most within the SLOs", config.capacity, config.capacity_rps)
    runner = web.AppRunner(sidecar.build_app(), access_log=None)
    await runner.setup()
    await listen(runner, config.host, config.port, "sidecar")
    log.info("listening on http://%s:%d; scraping %s every %.1f s", config.host, config.port,
             config.engine_url, config.engine_interval_s)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tasks = [asyncio.create_task(sidecar.run_collector(c)) for c in sidecar.collectors]
    if state is not None:
        tasks.append(asyncio.create_task(state.keep_saving(config.slo_state_interval_s)))
    await stop.wait()
    log.info("stopping")
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for collector in sidecar.collectors:
        with contextlib.suppress(Exception):
            await collector.close()
    if state is not None:
        await state.save_at_shutdown()
    await runner.cleanup()
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args)
    except ConfigError as exc:
        print(f"slo-sidecar sidecar: error: {exc}", file=sys.stderr)
        return 2
    try:
        spec = load_spec(config.slo or str(DEFAULT_SPEC))
        if config.slo_state_file:  # a state that could never be saved is a bad flag, not a quiet loss
            Path(config.slo_state_file).parent.mkdir(parents=True, exist_ok=True)
    except SpecError as exc:
        print(f"slo-sidecar sidecar: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"slo-sidecar sidecar: error: slo_state_file {config.slo_state_file}: its directory cannot be "
              f"created ({exc.strerror or exc})", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for slo in spec.slos:
        if not slo.sli.sidecar_can_evaluate:
            log.warning("SLO %s has a PromQL SLI: Prometheus's rules cover it, the sidecar cannot", slo.name)
    return asyncio.run(serve(config, spec))


__all__ = ["add_arguments", "run", "Sidecar"]
