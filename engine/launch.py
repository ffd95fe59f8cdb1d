"""The engine as vLLM's own OpenAI server, launched in this process with our instrumentation plugged in.

    python -m slo_sidecar.engine.launch [our flags] [any `vllm serve` flag]

vLLM parses its own flags (everything it serves, it serves as `vllm serve` would); ours are read first and
handed to the middleware through its SLO_ENGINE_* environment (engine/instrumentation.py). What this adds
to a plain `vllm serve`:
- `--middleware slo_sidecar.engine.asgi.SloMiddleware`, and the stat-logger plugin vLLM loads by its entry point;
- the embedded tiny model where no model is named, eager mode on CPU, a KV cache of --kv-cache-gib;
- the admission, body and timeout limits, on by default, and the API key from a file;
- drain on SIGTERM for --drain-timeout-s (vLLM's --shutdown-timeout);
- exit 1 when vLLM's engine core died, so that Kubernetes restarts the container (vLLM's server stops
  then, but exits 0).

A bad flag of ours exits 2 naming it, as every slo-sidecar command does; vLLM's parser does the same for
its own.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import threading
import time
from typing import Callable, Sequence

from slo_sidecar.iokit.arguments import non_negative_int, port_number, positive
from slo_sidecar.iokit.files import read_secret
from slo_sidecar.spec.load import DEFAULT_SPEC, SpecError, load_spec

from . import instrumentation
from .worker_faults import WORKER_FAULTS
from .settings import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_DRAIN_TIMEOUT_S,
    DEFAULT_KV_CACHE_GIB,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_WAITING_REQUESTS,
    DEFAULT_REQUEST_TIMEOUT_S,
    ENV_PREFIX,
    TRACE_EXPORTERS,
    default_trace_exporter,
)

MIDDLEWARE = "slo_sidecar.engine.asgi.SloMiddleware"


def our_arguments() -> argparse.ArgumentParser:
    """Our flags alone; everything else is vLLM's."""
    parser = argparse.ArgumentParser(prog="slo-sidecar engine", add_help=False, allow_abbrev=False,
                                     description="vLLM's OpenAI server with slo-sidecar's instrumentation")
    add = parser.add_argument
    add("--slo", default="", help="the SLO spec whose targets each request is judged against (default: embedded)")
    add("--trace-exporter", choices=TRACE_EXPORTERS,
        default=default_trace_exporter(os.environ),
        help="where spans go (default: otlp when OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT is set, else none)")
    add("--kv-cache-gib", type=positive(float), default=DEFAULT_KV_CACHE_GIB, help="the KV cache, in GiB")
    add("--max-waiting-requests", type=non_negative_int, default=DEFAULT_MAX_WAITING_REQUESTS,
        help="admitted sequences beyond --max-num-seqs before answering 429")
    add("--max-body-bytes", type=positive(int), default=DEFAULT_MAX_BODY_BYTES)
    add("--body-timeout-s", type=positive(float), default=DEFAULT_BODY_TIMEOUT_S,
        help="a request body must arrive within this; a client trickling it gets 408")
    add("--request-timeout-s", type=positive(float), default=DEFAULT_REQUEST_TIMEOUT_S,
        help="a generation request past it: 504")
    add("--drain-timeout-s", type=non_negative_int, default=int(DEFAULT_DRAIN_TIMEOUT_S),
        help="on SIGTERM, in-flight requests finish within this many seconds (vLLM's --shutdown-timeout)")
    add("--api-key-file", metavar="PATH", help="the key clients must send, read from this file (a mounted Secret)")
    add("--metrics-port", type=port_number,
        help="serve /metrics on this port only, so a NetworkPolicy can keep it from API clients (default: on "
             "vLLM's --port)")
    add("--admin-port", type=port_number, help="FOR TESTS AND DEMOS: the fault-injection listener's port")
    add("--admin-token-file", metavar="PATH", help="the token the admin listener requires")
    return parser


def middleware_environment(ours: argparse.Namespace, host: str | None = None) -> dict[str, str]:
    """What the middleware reads, from our flags (host: vLLM's --host)."""
    env = {"VLLM_HTTP_SERIES": "off", "SLO": ours.slo, "TRACE_EXPORTER": ours.trace_exporter,
           "MAX_WAITING_REQUESTS": str(ours.max_waiting_requests), "MAX_BODY_BYTES": str(ours.max_body_bytes),
           "BODY_TIMEOUT_S": repr(ours.body_timeout_s), "REQUEST_TIMEOUT_S": repr(ours.request_timeout_s)}
    if ours.admin_port is not None:
        env |= {"ADMIN_PORT": str(ours.admin_port), "ADMIN_TOKEN_FILE": ours.admin_token_file}
    if ours.metrics_port is not None:
        env |= {"METRICS_PORT": str(ours.metrics_port), "METRICS_HOST": host or ""}
    return {ENV_PREFIX + name: value for name, value in env.items() if value}


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, argparse.Namespace]:
    """(ours, vLLM's) from the command line; exits 2 on a bad flag."""
    if "-h" in argv or "--help" in argv:  # ours, then vLLM's parser prints its own and exits
        print(our_arguments().format_help().replace("usage: slo-sidecar engine", "usage: slo-sidecar engine [ours]"))
    ours, rest = our_arguments().parse_known_args(argv)
    if (ours.admin_port is None) != (ours.admin_token_file is None):
        our_arguments().error("--admin-port and --admin-token-file go together: the admin listener has its "
                              "own token")
    ours.api_key = None  # read once, here: a missing key file exits 2 before vLLM loads
    if ours.api_key_file:
        try:
            ours.api_key = read_secret(ours.api_key_file)
        except ValueError as exc:
            our_arguments().error(f"--api-key-file {ours.api_key_file}: {exc}")
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="slo-sidecar engine"))
    vllm_args = parser.parse_args(rest)
    if vllm_args.model_tag:
        vllm_args.model = vllm_args.model_tag
    if os.path.isdir(vllm_args.model) and not os.path.isfile(os.path.join(vllm_args.model, "config.json")):
        parser.error(f"--model {vllm_args.model}: not a Hugging Face model directory (no config.json)")
    elif vllm_args.model == parser.get_default("model"):  # no model named: the embedded one
        from .tiny_model import MODEL_NAME, ensure_default_model

        vllm_args.model = str(ensure_default_model())
        vllm_args.served_model_name = vllm_args.served_model_name or [MODEL_NAME]
    validate_parsed_serve_args(vllm_args)
    problem = check_before_loading(ours, vllm_args)
    if problem:
        our_arguments().error(problem)
    return ours, vllm_args


def check_before_loading(ours: argparse.Namespace, vllm_args: argparse.Namespace) -> str | None:
    """What vLLM would find only after loading the model (or not at all), found before: a port out of range
    or taken twice, a spec that does not load, a LoRA adapter that is not there. The flag and why, or None."""
    if not 0 < vllm_args.port < 65536:
        return f"--port {vllm_args.port}: expected a port in 1-65535"
    for flag, port in (("--port", vllm_args.port), ("--admin-port", ours.admin_port)):
        if ours.metrics_port is not None and ours.metrics_port == port:
            return f"--metrics-port {port}: the same port as {flag}"
    if ours.admin_port is not None and ours.admin_port == vllm_args.port:
        return f"--admin-port {ours.admin_port}: the same port as --port"
    try:
        load_spec(ours.slo or str(DEFAULT_SPEC))
    except SpecError as exc:
        return f"--slo: {exc}"
    adapters = vllm_args.lora_modules or []
    if adapters and not vllm_args.enable_lora:
        return "--lora-modules: needs --enable-lora"
    for adapter in adapters:
        if os.path.exists(adapter.path) or os.sep in adapter.path:  # a local path, not a Hugging Face repository
            if not os.path.isfile(os.path.join(adapter.path, "adapter_config.json")):
                return f"--lora-modules {adapter.name}={adapter.path}: not a LoRA adapter directory " \
                       "(no adapter_config.json)"
    return None


def configure(ours: argparse.Namespace, vllm_args: argparse.Namespace, on_gpu: bool) -> None:
    """Our instrumentation into vLLM's arguments and the environment it reads."""
    # No `*_created` series, ours or vLLM's (those made from here on): in the text format Prometheus stores each
    # as a series of its own, read by no rule or panel (with ten adapters, 489 of the engine's 1,021 series).
    from prometheus_client import disable_created_metrics

    disable_created_metrics()
    vllm_args.middleware = [*vllm_args.middleware, MIDDLEWARE]
    vllm_args.shutdown_timeout = ours.drain_timeout_s
    if ours.api_key:
        vllm_args.api_key = [ours.api_key]
    if on_gpu:
        vllm_args.kv_cache_memory_bytes = vllm_args.kv_cache_memory_bytes or int(ours.kv_cache_gib * 2**30)
    else:
        # vLLM's CPU build sizes its KV cache from this variable alone (whole GiB); by default it takes 90% of
        # the machine. torch.compile gains the tiny model nothing there and costs ~26 s at start.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, math.ceil(ours.kv_cache_gib))))
        vllm_args.enforce_eager = True
    os.environ.update(middleware_environment(ours, vllm_args.host))
    # Requests whose logits came out NaN are counted (vllm:corrupted_requests): bad events of correctness.
    os.environ.setdefault("VLLM_COMPUTE_NANS_IN_LOGITS", "1")
    if ours.admin_port is not None and not vllm_args.worker_extension_cls:  # the admin listener's model faults
        vllm_args.worker_extension_cls = WORKER_FAULTS


CHILD_STOP_GRACE_S = 2.0


async def serve_stoppable_while_loading(vllm_args: argparse.Namespace) -> None:
    """vLLM's run_server, with SIGTERM or SIGINT honoured while the model loads.

    vLLM's API server waits for its engine core in a blocking poll, in which no Python signal handler runs:
    a SIGTERM then waits for the load to end (minutes for a large model; the pod hangs to its grace period).
    The C-level handler still writes the signal to the wakeup fd: a thread reading it stops vLLM's child
    processes and exits 0, as the load cannot be interrupted otherwise. Once vLLM serves, the middleware's
    lifespan hands the wakeup fd back (instrumentation.serving) and vLLM's own handlers take over."""
    from vllm.entrypoints.launchers.api_server.entry import run_server

    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    stopping = threading.Event()

    def stop_when_signalled() -> None:
        while True:
            signum = os.read(read_end, 1)
            if instrumentation.serving.is_set():
                return
            if signum and signum[0] in (signal.SIGTERM, signal.SIGINT):
                stopping.set()
                stop_children(CHILD_STOP_GRACE_S)
                os._exit(0)

    def served() -> None:
        signal.set_wakeup_fd(previous)
        os.write(write_end, b"\0")  # wakes the reader, which sees it served and ends

    instrumentation.serving = Served(served)
    threading.Thread(target=stop_when_signalled, name="slo-stop-while-loading", daemon=True).start()
    try:
        await run_server(vllm_args)
    except BaseException:
        if stopping.is_set():
            # The children it stopped fail vLLM's load ("generator didn't yield" from its engine start), which
            # would exit 1 before the stop's exit 0: the exit is the stop's.
            time.sleep(3 * CHILD_STOP_GRACE_S)
            os._exit(0)
        raise


class Served:
    """Set once vLLM serves (from the ASGI lifespan, in the main thread)."""

    def __init__(self, on_set: Callable[[], None]):
        self._event = threading.Event()
        self._on_set = on_set

    def set(self) -> None:
        if not self._event.is_set():
            self._event.set()
            self._on_set()

    def is_set(self) -> bool:
        return self._event.is_set()


def stop_children(grace_s: float) -> None:
    """SIGTERM to every descendant of this process (vLLM's engine core and its workers); SIGKILL to those
    still there after grace_s."""
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


def stop_before_serving(signum: int, frame: object) -> None:
    """SIGTERM or SIGINT before vLLM's server installs its own handlers: stop what has started, exit 0. Being a
    Python handler, it also makes the C-level handler write the signal to the wakeup fd that
    serve_stoppable_while_loading reads (with SIG_DFL, a SIGTERM in that window killed the process: -15)."""
    stop_children(CHILD_STOP_GRACE_S)
    os._exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop_before_serving)
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup

    ours, vllm_args = parse(sys.argv[1:] if argv is None else argv)
    from vllm.platforms import current_platform

    configure(ours, vllm_args, on_gpu=current_platform.is_cuda_alike())
    cli_env_setup()
    from vllm.logger import configure_logging_from_args

    configure_logging_from_args(vllm_args)
    import uvloop

    try:
        uvloop.run(serve_stoppable_while_loading(vllm_args))
    except KeyboardInterrupt:  # SIGTERM or SIGINT while the model loaded: vLLM stopped its engine core
        return 0
    state = instrumentation.current()
    return 1 if state is not None and state.died else 0


if __name__ == "__main__":
    sys.exit(main())
