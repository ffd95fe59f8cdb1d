"""`slo-sidecar engine`: the process lifecycle around the HTTP server and vLLM.

Start listening at once (so /health and /ready answer "loading" while the model
loads), load vLLM in a thread, serve; on SIGTERM or SIGINT stop admitting work
(/ready 503), let in-flight requests finish within the drain timeout, stop vLLM's
child processes, exit 0. SIGTERM while loading stops vLLM's children and exits 0
at once; vLLM's engine core dying exits 1, so Kubernetes restarts the container.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry, disable_created_metrics

from iokit.serving import listen
from slo_spec import __version__
from slo_spec.load import DEFAULT_SPEC, SpecError, load_spec
from slo_spec.model import Spec

from .admin import build_admin_app
from .health import visible_gpu_uuids
from .malformed_http import MalformedRequestLog
from .adapter_cache import AdapterResidency
from .metrics import ConstantLabels, ServerMetrics
from .server import EngineState, build_app, build_metrics_app
from .settings import EngineSettings, SettingsError, check_lora
from .slo_judge import SloJudge
from .tracing import setup_tracing

if TYPE_CHECKING:
    from .backend import VllmBackend

log = logging.getLogger("engine")


def resolve_model(settings: EngineSettings) -> tuple[str, str]:
    """(model directory, served name); builds the embedded model on first use."""
    if settings.model is None:
        from .tiny_model import MODEL_NAME, ensure_default_model

        return str(ensure_default_model()), settings.served_model_name or MODEL_NAME
    model_dir = Path(settings.model)
    if not (model_dir / "config.json").is_file():
        print(f"slo-sidecar engine: error: --model {settings.model}: not a Hugging Face model directory "
              "(no config.json); only local models can be served here", file=sys.stderr)
        raise SystemExit(2)
    return str(model_dir), settings.served_model_name or model_dir.name


async def serve(settings: EngineSettings, spec: Spec, api_key: str | None, admin_token: str | None) -> int:
    model_dir, served_name = resolve_model(settings)
    try:
        check_lora(settings, served_name)
    except SettingsError as exc:
        print(f"slo-sidecar engine: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    # No `*_created` series, ours or vLLM's (created from here on): in the text format Prometheus stores
    # each as a series of its own, one per counter and histogram series, read by no rule or panel: with
    # ten adapters they were 489 of the engine's 1,021 own samples.
    disable_created_metrics()
    # Our series go to a registry of their own, served through vLLM's with model_name added.
    own = CollectorRegistry()
    REGISTRY.register(ConstantLabels(own, {"model_name": served_name}))
    tracer = setup_tracing(settings.trace_exporter, __version__, served_name, own)
    models = (served_name, *(module.name for module in settings.lora_modules))
    metrics = ServerMetrics(own, max_waiting_requests=settings.max_waiting_requests, models=models)
    for uuid in visible_gpu_uuids():
        metrics.accelerators.labels(uuid=uuid).set(1)
    state = EngineState(settings=settings, served_model_name=served_name, metrics=metrics, tracer=tracer,
                        judge=SloJudge(spec, own, models), api_key=api_key,
                        adapter_residency=AdapterResidency(settings.max_loras) if settings.enable_lora else None)
    state.faults.served = models
    state.generations_idle.set()
    runners = [await _start(build_app(state), settings.host, settings.port, logger=MalformedRequestLog(metrics))]
    if settings.metrics_port is not None:
        runners.append(await _start(build_metrics_app(), settings.host, settings.metrics_port))
        log.info("serving /metrics on http://%s:%d", settings.host, settings.metrics_port)
    if admin_token is not None and settings.admin_port is not None:
        runners.append(await _start(build_admin_app(state.faults, admin_token), settings.host, settings.admin_port))
        log.warning("admin listener (fault injection) on http://%s:%d: for tests and demos only",
                    settings.host, settings.admin_port)
    log.info("listening on http://%s:%d (model loading)", settings.host, settings.port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    metrics.event_loop_tasks.set_function(lambda: len(asyncio.all_tasks(loop)))

    from .backend import VllmBackend

    backend = VllmBackend(settings, model_dir, served_name)
    load = asyncio.create_task(asyncio.to_thread(backend.load))
    stopped_early = asyncio.create_task(stop.wait())
    await asyncio.wait({load, stopped_early}, return_when=asyncio.FIRST_COMPLETED)
    if not load.done():
        # vLLM cannot be interrupted while it loads (minutes for a large model, past the pod's grace
        # period): stop listening, stop its child processes, and leave without waiting for the thread.
        log.info("stop requested while loading: stopping vLLM's processes and exiting")
        state.set_phase("draining")
        for each in runners:
            await each.cleanup()
        stop_children(CHILD_STOP_GRACE_S)
        tracer.shutdown()
        logging.shutdown()
        os._exit(0)
    stopped_early.cancel()
    exit_code = 0
    if load.exception() is None:
        freeze_startup_heap()
        state.backend = backend
        state.set_phase("ready")
        log.info("ready: serving %r", served_name)
        if await _until_stopped_or_dead(stop, backend) == "dead":
            # vLLM's engine core is gone (killed, out of memory): no request can succeed in this
            # process. Exit non-zero so Kubernetes restarts the container at once.
            log.error("the vLLM engine core died; exiting so the container is restarted")
            state.set_phase("failed")
            exit_code = 1
        else:
            await drain(state)
    else:
        state.set_phase("failed")
        log.error("the vLLM engine failed to start: %s", load.exception())
        exit_code = 1
    for each in runners:
        await each.cleanup()
    backend.shutdown()
    tracer.shutdown()  # flushes the spans still queued
    log.info("stopped")
    return exit_code


def freeze_startup_heap() -> None:
    """Move what start-up built (torch, vLLM, the tokenizer: millions of objects) out of the garbage
    collector's sight, as vLLM's own server does once it has started (vllm.utils.gc_utils.freeze_gc_heap).

    Otherwise a full collection, which any allocation may set off (a /metrics exposition, a busy stream),
    walks them all and stops the process for a second or two: here one /metrics answer in ~1,000 under
    load took 2 s while /health, just before and after, took 2 ms.
    """
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info("start-up heap frozen: %d objects out of the garbage collector's sight (%.2f s)",
             gc.get_freeze_count(), time.perf_counter() - started)


CHILD_STOP_GRACE_S = 2.0
DEAD_ENGINE_POLL_S = 0.5


async def _start(app: web.Application, host: str, port: int, **handler_args: object) -> web.AppRunner:
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, **handler_args)
    await runner.setup()
    await listen(runner, host, port, "engine")
    return runner


async def _until_stopped_or_dead(stop: asyncio.Event, backend: "VllmBackend") -> str:
    """'stop' on SIGTERM or SIGINT, 'dead' as soon as vLLM's engine core is seen dead."""
    while not stop.is_set():
        if backend.dead:
            return "dead"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), DEAD_ENGINE_POLL_S)
    return "stop"


def stop_children(grace_s: float) -> None:
    """SIGTERM to every descendant of this process (vLLM's engine core and its workers); SIGKILL to
    those still there after grace_s."""
    import psutil  # a dependency of vLLM

    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(alive, timeout=grace_s)


async def drain(state: EngineState) -> None:
    state.set_phase("draining")
    timeout = state.settings.drain_timeout_s
    log.info("draining: %d requests in flight, waiting up to %.0f s", state.active_generations, timeout)
    try:
        await asyncio.wait_for(state.generations_idle.wait(), timeout)
    except TimeoutError:
        log.warning("drain timeout: %d requests still in flight are cut off", state.active_generations)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def run(args: argparse.Namespace) -> int:
    settings = EngineSettings.from_args(args)
    try:
        spec = load_spec(settings.slo or str(DEFAULT_SPEC))  # the targets its exact SLO counters judge
        api_key = settings.client_api_key()
        admin_token = admin_token_of(settings)
    except (SpecError, SettingsError) as exc:
        print(f"slo-sidecar engine: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        import uvloop  # the event loop vLLM's own server runs on (uvicorn picks it when installed)
    except ImportError:
        return asyncio.run(serve(settings, spec, api_key, admin_token))
    return uvloop.run(serve(settings, spec, api_key, admin_token))


def admin_token_of(settings: EngineSettings) -> str | None:
    """The admin listener's token; None without an admin listener. Its port must be one of its own."""
    if settings.admin_port is None:
        if settings.admin_token_file:
            raise SettingsError("--admin-token-file: given without --admin-port")
        return None
    if not settings.admin_token_file:
        raise SettingsError("--admin-port: needs --admin-token-file (the admin listener has its own token)")
    if settings.admin_port in (settings.port, settings.metrics_port):
        raise SettingsError(f"--admin-port {settings.admin_port}: must differ from --port and --metrics-port")
    return settings.admin_token()
