"""The engine as vLLM's own OpenAI server, launched in this process with our instrumentation plugged in.

    python -m engine.launch [our flags] [any `vllm serve` flag]

vLLM parses its own flags (everything it serves, it serves as `vllm serve` would); ours are read first and
handed to the middleware through its SLO_ENGINE_* environment (engine/instrumentation.py). What this adds
to a plain `vllm serve`:
- `--middleware engine.asgi.SloMiddleware`, and the stat-logger plugin vLLM loads by its entry point;
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
import math
import os
import sys
from typing import Sequence

from iokit.arguments import non_negative_int, port_number, positive
from iokit.files import read_secret

from . import instrumentation
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

MIDDLEWARE = "engine.asgi.SloMiddleware"


def our_arguments() -> argparse.ArgumentParser:
    """Our flags alone; everything else is vLLM's."""
    parser = argparse.ArgumentParser(prog="slo-sidecar engine", add_help=False,
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
    add("--admin-port", type=port_number, help="FOR TESTS AND DEMOS: the fault-injection listener's port")
    add("--admin-token-file", metavar="PATH", help="the token the admin listener requires")
    return parser


def middleware_environment(ours: argparse.Namespace) -> dict[str, str]:
    """What the middleware reads, from our flags."""
    env = {"SLO": ours.slo, "TRACE_EXPORTER": ours.trace_exporter,
           "MAX_WAITING_REQUESTS": str(ours.max_waiting_requests), "MAX_BODY_BYTES": str(ours.max_body_bytes),
           "BODY_TIMEOUT_S": repr(ours.body_timeout_s), "REQUEST_TIMEOUT_S": repr(ours.request_timeout_s)}
    if ours.admin_port is not None:
        env |= {"ADMIN_PORT": str(ours.admin_port), "ADMIN_TOKEN_FILE": ours.admin_token_file}
    return {ENV_PREFIX + name: value for name, value in env.items() if value}


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, argparse.Namespace]:
    """(ours, vLLM's) from the command line; exits 2 on a bad flag."""
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
    elif vllm_args.model == parser.get_default("model"):  # no model named: the embedded one
        from .tiny_model import MODEL_NAME, ensure_default_model

        vllm_args.model = str(ensure_default_model())
        vllm_args.served_model_name = vllm_args.served_model_name or [MODEL_NAME]
    validate_parsed_serve_args(vllm_args)
    return ours, vllm_args


def configure(ours: argparse.Namespace, vllm_args: argparse.Namespace, on_gpu: bool) -> None:
    """Our instrumentation into vLLM's arguments and the environment it reads."""
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
    os.environ.update(middleware_environment(ours))


def main(argv: Sequence[str] | None = None) -> int:
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup

    ours, vllm_args = parse(sys.argv[1:] if argv is None else argv)
    from vllm.platforms import current_platform

    configure(ours, vllm_args, on_gpu=current_platform.is_cuda_alike())
    cli_env_setup()
    from vllm.entrypoints.launchers.api_server.entry import run_server
    from vllm.logger import configure_logging_from_args

    configure_logging_from_args(vllm_args)
    import uvloop

    uvloop.run(run_server(vllm_args))
    state = instrumentation.current()
    return 1 if state is not None and state.died else 0


if __name__ == "__main__":
    sys.exit(main())
