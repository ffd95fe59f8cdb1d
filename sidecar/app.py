"""`slo-sidecar sidecar`: one asyncio loop, each poller (engine, GPUs, probes) on its own interval and timeout.

A scrape of the sidecar's /metrics never waits on a poller: every poller
stores its last completed families, and the exposition reads those. A failing
poller is counted and reported down, and the process carries on. Its last good
values stay while younger than stale_after_s (one failed scrape is not an
outage), then are withdrawn: alerts and the HPA see no data, never a frozen number.
Nor can one family source fail the whole /metrics: each is guarded (guard.py), and a
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
from typing import Callable, Iterable, Sequence

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

from slo_sidecar.iokit.serving import listen
from slo_sidecar.spec.golden import GoldenError, load_golden_set
from slo_sidecar.spec.load import DEFAULT_SPEC, SpecError, load_spec
from slo_sidecar.spec.model import Spec

from .config import ConfigError, SidecarConfig, add_arguments, load_config
from .cost import CostCollector
from .engine_poller import EnginePoller, SnapshotConsumer
from .engine_processes import engine_pids
from .gpu_families import PodLabels
from .gpu_poller import GpuPoller
from .guard import GuardedExposition
from .headroom import REQUEST_RATE, Headroom, HeadroomCollector, exact_targets
from .poller import Poller, PollError
from .golden_probe import GoldenProber
from .probe import Prober
from .slo_families import SloCollector
from .slo_state import SloStateFile
from .slo_tracker import SloTracker

log = logging.getLogger(__name__)

# /metrics is rendered once per poll and served as bytes until then, or for at most this long: the
# process figures and staleness move on between polls too. 20 scrapers cost one rendering.
RENDERED_MAX_AGE_S = 1.0


@dataclass
class PollerState:
    families: list[Metric] = field(default_factory=list)
    last_success: float | None = None  # wall clock
    last_error: str | None = None
    failures: int = 0  # in a row

    @property
    def up(self) -> bool:
        return self.last_success is not None and self.last_error is None

    def fresh(self, now: float, max_age_s: float) -> bool:
        return self.last_success is not None and now - self.last_success <= max_age_s


class LastFamilies:
    """prometheus_client custom collector: yields the families poller `name` last stored, while fresh."""

    def __init__(self, sidecar: "Sidecar", name: str):
        self.sidecar = sidecar
        self.name = name

    def collect(self) -> Iterable[Metric]:
        if self.sidecar.is_fresh(self.name):
            yield from self.sidecar.states[self.name].families


class Sidecar:
    def __init__(self, config: SidecarConfig, pollers: list[Poller], exposition: GuardedExposition):
        self.config = config
        self.pollers = pollers
        self.exposition = exposition
        self.states = {p.name: PollerState() for p in pollers}
        # Values older than stale_after_s are withdrawn; a source polled less often keeps
        # its values for two of its intervals, so they do not blink between two good runs.
        self.max_age_s = {p.name: max(config.stale_after_s, 2 * p.interval_s) for p in pollers}
        for poller in pollers:  # one guard each: broken families of one leave the others served
            exposition.add(poller.name, LastFamilies(self, poller.name))
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
        # The gauges read the pollers' state at scrape time, so they cannot disagree with /health.
        for poller in pollers:
            state = self.states[poller.name]
            self.up.labels(poller.name).set_function(lambda state=state: float(state.up))
            self.last_success.labels(poller.name).set_function(lambda state=state: state.last_success or 0.0)
            for reason in (*poller.error_reasons, "timeout", "internal"):
                self.errors.labels(poller.name, reason)
        if "engine" in self.states:
            self.engine_up.set_function(lambda: float(self.states["engine"].up))

    def is_fresh(self, name: str) -> bool:
        """Whether poller `name`'s last good values are young enough to serve."""
        return self.states[name].fresh(time.time(), self.max_age_s[name])

    def _engine_is_stale(self) -> float:
        return 0.0 if "engine" in self.states and self.is_fresh("engine") else 1.0

    async def run_poller(self, poller: Poller) -> None:
        state = self.states[poller.name]
        while True:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(poller.timeout_s):
                    state.families = await poller.poll()
                state.last_success, state.last_error, state.failures = time.time(), None, 0
            except (PollError, TimeoutError) as exc:
                reason = exc.reason if isinstance(exc, PollError) else "timeout"
                self._failed(poller.name, state, reason, str(exc) or reason)
            except Exception as exc:  # a poller bug must not take the sidecar down
                log.exception("poller %s failed", poller.name)
                self._failed(poller.name, state, "internal", repr(exc))
            elapsed = time.perf_counter() - started
            self.duration.labels(poller.name).set(elapsed)
            self.exposition.changed()  # the next /metrics renders afresh
            await asyncio.sleep(max(0.0, retry_delay(poller, state.failures) - elapsed))

    def _failed(self, name: str, state: PollerState, reason: str, detail: str) -> None:
        if state.last_error is None:  # once per outage, not every interval
            log.warning("poller %s down: %s", name, detail)
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
        # The sidecar itself is alive whatever its pollers say: a dead engine must not restart it.
        status = "ok" if all(c["up"] for c in collectors.values()) else "degraded"
        return web.json_response({"status": status, "collectors": collectors})

    async def ready(self, request: web.Request) -> web.Response:
        """Kubernetes' readiness: 503 while the golden probes quarantine the pod (correctness.quarantine), so it
        leaves its Service's endpoints; the engine stays up for debugging. 200 otherwise, whatever the engine's
        state: the engine's own readiness says whether it serves."""
        golden = next((p for p in self.pollers if isinstance(p, GoldenProber)), None)
        if golden is not None and golden.quarantined:
            return web.json_response({"status": "quarantined", "bad_golden_probes_in_a_row": golden.bad_in_a_row},
                                     status=503)
        return web.json_response({"status": "ready"})

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/health", self.health)
        app.router.add_get("/ready", self.ready)
        return app


def _tasks_alive() -> float:
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:  # no event loop runs in this thread (a scrape from a test)
        return 0.0


def retry_delay(poller: Poller, failures: int) -> float:
    """The interval while all is well; after failures, doubling up to the poller's backoff_max_s."""
    if failures == 0:
        return poller.interval_s
    return max(poller.interval_s, min(poller.interval_s * 2 ** (failures - 1), poller.backoff_max_s))


def build_pollers(config: SidecarConfig, consumers: Sequence[SnapshotConsumer] = (),
                  process_start_time: float | None = None, tracker: SloTracker | None = None
                  ) -> tuple[EnginePoller, GpuPoller]:
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
    engine = EnginePoller(config, consumers, process_start_time)
    gpu = GpuPoller(nvml, interval_s=config.gpu_interval_s, timeout_s=config.gpu_timeout_s,
                    backoff_max_s=config.gpu_backoff_max_s,
                    pod=PodLabels(config.pod, config.namespace, config.container), engine_pids=find_engine,
                    dcgm_compat=config.dcgm_compat, hostname=os.environ.get("NODE_NAME"),
                    scope=config.gpu_scope, engine_gpus=lambda: engine.engine_gpus, tracker=tracker)
    return engine, gpu


def build_cost_collector(config: SidecarConfig, sidecar: "Sidecar", engine: EnginePoller,
                         gpus: Callable[[], int]) -> CostCollector:
    """The cost figures, pod and per tenant, from the engine's last snapshot; withdrawn once it is stale."""
    if config.gpu_hourly_usd is None:
        raise ValueError("cost figures need gpu_hourly_usd")

    def fresh() -> bool:
        return engine.last_snapshot is not None and sidecar.is_fresh("engine")

    return CostCollector(
        config.gpu_hourly_usd, gpus=gpus,
        generation_rate=lambda: engine.rate("generation_tokens_per_second") if fresh() else None,
        tenant_rates=lambda: engine.last_snapshot.tenant_tokens if fresh() else None,
        prompt_token_weight=config.prompt_token_weight)


def build_headroom(config: SidecarConfig, spec: Spec) -> Headroom:
    """The SLO headroom: an engine snapshot consumer, fed after each scrape."""
    return Headroom(exact_targets(spec), time_constant_s=config.headroom_time_constant_s)


def build_headroom_collector(config: SidecarConfig, headroom: Headroom, sidecar: "Sidecar", engine: EnginePoller
                             ) -> HeadroomCollector:
    """The headroom and the capacity utilisation at scrape time; both withdrawn once the engine's values are
    stale."""
    return HeadroomCollector(headroom, fresh=lambda: sidecar.is_fresh("engine"),
                             request_rate=lambda: engine.rate(REQUEST_RATE), capacity_rps=config.capacity_rps)


@dataclass
class Wiring:
    """The sidecar's parts, connected as the process runs them (serve), before anything polls."""

    sidecar: Sidecar
    exposition: GuardedExposition
    tracker: SloTracker
    engine: EnginePoller
    gpu: GpuPoller
    prober: Prober | None
    state: SloStateFile | None
    golden: GoldenProber | None = None


def build_golden_prober(config: SidecarConfig, spec: Spec, tracker: SloTracker) -> GoldenProber | None:
    """The golden probes, with a baseline (golden_baseline; run() has checked it was recorded on this set)."""
    if config.golden is None:
        return None
    golden = load_golden_set(spec.correctness.golden_set)
    return GoldenProber(config.probe_url or config.engine_url, config.engine_api_key, golden, config.golden,
                        spec.correctness, tracker)


def wire(config: SidecarConfig, spec: Spec, rendered_max_age_s: float = 0.0) -> Wiring:
    """Every poller, consumer and family source of the process, from its settings and its spec; the SLO state
    file, if any, taken up (it seeds the engine's last process start time)."""
    exposition = GuardedExposition(max_age_s=rendered_max_age_s)
    ProcessCollector(registry=exposition.group("process"))
    PlatformCollector(registry=exposition.group("process"))
    tracker = SloTracker(spec)
    state = None
    if config.slo_state_file:
        state = SloStateFile(Path(config.slo_state_file), tracker, exposition.group("sidecar"))
        state.load(time.time())
    exposition.add("slo", SloCollector(tracker))
    headroom = build_headroom(config, spec)
    golden = build_golden_prober(config, spec, tracker)
    consumers = [tracker, headroom, *([golden] if golden is not None else [])]
    engine, gpu = build_pollers(config, consumers, tracker.engine_start_time, tracker)
    prober = Prober(config, tracker) if config.probe_interval_s > 0 else None
    sidecar = Sidecar(config, [engine, gpu, *(p for p in (prober, golden) if p is not None)], exposition)
    if config.gpu_hourly_usd is not None:
        exposition.add("cost", build_cost_collector(config, sidecar, engine, gpus=lambda: gpu.gpu_count or config.gpus))
    exposition.add("headroom", build_headroom_collector(config, headroom, sidecar, engine))
    return Wiring(sidecar, exposition, tracker, engine, gpu, prober, state, golden)


async def serve(config: SidecarConfig, spec: Spec) -> int:
    disable_created_metrics()  # *_created series only add noise to the sidecar's small exposition
    wiring = wire(config, spec, RENDERED_MAX_AGE_S)
    sidecar, state = wiring.sidecar, wiring.state
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
    tasks = [asyncio.create_task(sidecar.run_poller(p)) for p in sidecar.pollers]
    if state is not None:
        tasks.append(asyncio.create_task(state.keep_saving(config.slo_state_interval_s)))
    await stop.wait()
    log.info("stopping")
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for poller in sidecar.pollers:
        with contextlib.suppress(Exception):
            await poller.close()
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
        if config.golden is not None:  # a baseline of another golden set is a bad setting, said at start
            config.golden.check_matches(load_golden_set(spec.correctness.golden_set), config.golden_baseline)
        if config.slo_state_file:  # a state that could never be saved is a bad flag, not a quiet loss
            Path(config.slo_state_file).parent.mkdir(parents=True, exist_ok=True)
    except SpecError as exc:
        print(f"slo-sidecar sidecar: error: {exc}", file=sys.stderr)
        return 2
    except GoldenError as exc:
        print(f"slo-sidecar sidecar: error: golden_baseline {exc}", file=sys.stderr)
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
