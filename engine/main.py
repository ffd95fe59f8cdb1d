"""`slo-sidecar engine`: the process lifecycle around the HTTP server and vLLM.

Start listening at once (so /health and /ready answer "loading" while the model
loads), load vLLM in a thread, serve; on SIGTERM or SIGINT stop admitting work
(/ready 503), let in-flight requests finish within the drain timeout, stop vLLM's
child processes, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry

from iokit.serving import listen
from slo_spec import __version__
from slo_spec.load import DEFAULT_SPEC, SpecError, load_spec
from slo_spec.model import Spec

from .health import visible_gpu_uuids
from .metrics import ConstantLabels, ServerMetrics
from .server import EngineState, build_app, build_metrics_app
from .settings import EngineSettings
from .slo_judge import SloJudge
from .tracing import setup_tracing

log = logging.getLogger("engine")


def resolve_model(settings: EngineSettings) -> tuple[str, str]:
    """(model directory, served name); builds the embedded model on first use."""
    if settings.model is None:
        from .tiny_model import MODEL_NAME, ensure_default_model

        return str(ensure_default_model()), settings.served_model_name or MODEL_NAME
    model_dir = Path(settings.model)
    if not (model_dir / "config.json").is_file():
        raise SystemExit(f"error: --model {settings.model}: not a Hugging Face model directory "
                         "(no config.json); only local models can be served here")
    return str(model_dir), settings.served_model_name or model_dir.name


async def serve(settings: EngineSettings, spec: Spec) -> int:
    model_dir, served_name = resolve_model(settings)
    # Our series go to a registry of their own, served through vLLM's with model_name added.
    own = CollectorRegistry()
    REGISTRY.register(ConstantLabels(own, {"model_name": served_name}))
    tracer = setup_tracing(settings.trace_exporter, __version__, served_name, own)
    metrics = ServerMetrics(own, max_waiting_requests=settings.max_waiting_requests)
    for uuid in visible_gpu_uuids():
        metrics.accelerators.labels(uuid=uuid).set(1)
    state = EngineState(settings=settings, served_model_name=served_name, metrics=metrics, tracer=tracer,
                        judge=SloJudge(spec, own))
    state.generations_idle.set()
    runner = web.AppRunner(build_app(state), handler_cancellation=True, access_log=None)
    await runner.setup()
    await listen(runner, settings.host, settings.port, "engine")
    runners = [runner]
    if settings.metrics_port is not None:
        runners.append(web.AppRunner(build_metrics_app(), access_log=None))
        await runners[-1].setup()
        await listen(runners[-1], settings.host, settings.metrics_port, "engine")
        log.info("serving /metrics on http://%s:%d", settings.host, settings.metrics_port)
    log.info("listening on http://%s:%d (model loading)", settings.host, settings.port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    from .backend import VllmBackend

    backend = VllmBackend(settings, model_dir, served_name)
    load = asyncio.create_task(asyncio.to_thread(backend.load))
    stopped_early = asyncio.create_task(stop.wait())
    await asyncio.wait({load, stopped_early}, return_when=asyncio.FIRST_COMPLETED)
    exit_code = 0
    if load.done() and load.exception() is None:
        state.backend = backend
        state.set_phase("ready")
        log.info("ready: serving %r", served_name)
        await stop.wait()
        await drain(state)
    elif load.done():
        state.set_phase("failed")
        log.error("the vLLM engine failed to start: %s", load.exception())
        exit_code = 1
    else:
        log.info("stop requested while loading; waiting for vLLM to finish starting so it can be stopped")
        state.set_phase("draining")
        await asyncio.wait({load})
    stopped_early.cancel()
    for each in runners:
        await each.cleanup()
    backend.shutdown()
    tracer.shutdown()  # flushes the spans still queued
    log.info("stopped")
    return exit_code


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
    except SpecError as exc:
        print(f"slo-sidecar engine: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        import uvloop  # the event loop vLLM's own server runs on (uvicorn picks it when installed)
    except ImportError:
        return asyncio.run(serve(settings, spec))
    return uvloop.run(serve(settings, spec))
