"""Engine settings: command-line flags, falling back to SLO_ENGINE_* environment variables.

Flags win over the environment, which wins over the defaults. A malformed
environment value is reported like a bad flag (exit 2), never as a traceback.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any, Callable

from iokit.arguments import non_negative_int, port_number, positive
from iokit.files import read_secret as read_secret_file

ENV_PREFIX = "SLO_ENGINE_"
TRACE_EXPORTERS = ("otlp", "jaeger", "console", "none")

DEFAULT_PORT = 8000
DEFAULT_DRAIN_TIMEOUT_S = 30.0
# The engine's own limits, whichever server it runs (engine/launch.py hands them to the middleware).
DEFAULT_KV_CACHE_GIB = 1.0
DEFAULT_MAX_WAITING_REQUESTS = 256
DEFAULT_REQUEST_TIMEOUT_S = 600.0
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_BODY_TIMEOUT_S = 30.0


def default_trace_exporter(environ: Any) -> str:
    """otlp when an OTLP endpoint is configured (OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT), else none."""
    configured = any(name in environ for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    return "otlp" if configured else "none"


@dataclass(frozen=True)
class EngineSettings:
    host: str
    port: int
    metrics_port: int | None  # None: /metrics on `port`, beside the API
    model: str | None  # None: the embedded tiny model, built on first use
    served_model_name: str | None
    max_model_len: int
    max_num_seqs: int
    dtype: str
    kv_cache_gib: float
    enforce_eager: bool | None  # None: eager on CPU, compiled/graphs on GPU
    enable_lora: bool
    lora_modules: list[LoraModule]
    max_loras: int
    max_lora_rank: int
    api_key: str | None
    api_key_file: str | None
    max_waiting_requests: int
    request_timeout_s: float
    drain_timeout_s: float
    max_body_bytes: int
    body_timeout_s: float
    admin_port: int | None  # None: no admin listener (and so no fault injection)
    admin_token_file: str | None
    trace_exporter: str
    slo: str
    log_level: str

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "EngineSettings":
        return cls(**{field: getattr(args, field) for field in cls.__dataclass_fields__})

    def client_api_key(self) -> str | None:
        """The key clients must send: from --api-key-file when given (read at start), else --api-key."""
        return read_secret(self.api_key_file, "--api-key-file") if self.api_key_file else self.api_key

    def admin_token(self) -> str:
        return read_secret(self.admin_token_file or "", "--admin-token-file")


@dataclass(frozen=True)
class LoraModule:
    """One adapter served beside the base model: clients name it in `model`."""

    name: str
    path: str


def lora_module(text: str) -> LoraModule:
    """NAME=PATH, as vLLM's --lora-modules takes it; PATH a PEFT adapter directory."""
    name, equals, path = text.partition("=")
    if not equals or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    if not os.path.isfile(os.path.join(path, "adapter_config.json")):
        raise argparse.ArgumentTypeError(f"{path}: not a LoRA adapter directory (no adapter_config.json)")
    return LoraModule(name.strip(), path)


lora_module.__name__ = "LoRA module"


def check_lora(settings: EngineSettings, served_name: str) -> None:
    """Adapters need --enable-lora; their names are label values and model names, so each is unique."""
    if settings.lora_modules and not settings.enable_lora:
        raise SettingsError("--lora-modules: needs --enable-lora")
    names = [module.name for module in settings.lora_modules]
    for name in names:
        if name == served_name or names.count(name) > 1:
            raise SettingsError(f"--lora-modules: the name {name!r} is used twice (or is the base model's)")


class SettingsError(Exception):
    """A setting that cannot be used: the message names the flag and the reason (exit 2)."""


def read_secret(path: str, flag: str) -> str:
    try:
        return read_secret_file(path)
    except ValueError as exc:
        raise SettingsError(f"{flag} {path}: {exc}") from None


def _env_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


class _EnvDefaults:
    """Reads SLO_ENGINE_<NAME> as the default of each flag, converted like the flag."""

    def __init__(self, parser: argparse.ArgumentParser, environ: dict[str, str]):
        self.parser = parser
        self.environ = environ

    def __call__(self, dest: str, convert: Callable[[str], Any], default: Any) -> Any:
        name = ENV_PREFIX + dest.upper()
        if name not in self.environ:
            return default
        try:
            return convert(self.environ[name])
        except (ValueError, argparse.ArgumentTypeError) as exc:
            self.parser.error(f"environment variable {name}: {exc}")


def add_engine_arguments(parser: argparse.ArgumentParser, environ: dict[str, str] | None = None) -> None:
    env = _EnvDefaults(parser, dict(os.environ if environ is None else environ))
    pos_int, pos_float = positive(int), positive(float)
    add = parser.add_argument
    add("--host", default=env("host", str, "0.0.0.0"), help="address to listen on")
    add("--port", type=port_number, default=env("port", port_number, DEFAULT_PORT))
    add("--metrics-port", type=port_number, default=env("metrics_port", port_number, None),
        help="serve /metrics on this port only, so a NetworkPolicy can keep it from API clients "
             "(default: on --port)")
    add("--model", default=env("model", str, None),
        help="local Hugging Face model directory (default: the embedded tiny model)")
    add("--served-model-name", default=env("served_model_name", str, None),
        help="model name clients send (default: tiny-llama, or the model directory's name)")
    add("--max-model-len", type=pos_int, default=env("max_model_len", pos_int, 1024),
        help="context length: prompt plus generated tokens")
    add("--max-num-seqs", type=pos_int, default=env("max_num_seqs", pos_int, 32),
        help="sequences vLLM runs concurrently")
    add("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
        default=env("dtype", str, "auto"))
    add("--kv-cache-gib", type=pos_float, default=env("kv_cache_gib", pos_float, DEFAULT_KV_CACHE_GIB),
        help="memory for the KV cache, in GiB")
    add("--enforce-eager", action=argparse.BooleanOptionalAction,
        default=env("enforce_eager", _env_bool, None),
        help="skip torch.compile and CUDA graphs (default: on for CPU, off for GPU)")
    add("--enable-lora", action=argparse.BooleanOptionalAction, default=env("enable_lora", _env_bool, False),
        help="serve LoRA adapters beside the base model (vLLM's flag)")
    add("--lora-modules", nargs="+", type=lora_module, default=[], metavar="NAME=PATH",
        help="adapters, each a PEFT directory; clients pick one by its NAME in `model` (vLLM's flag)")
    add("--max-loras", type=pos_int, default=env("max_loras", pos_int, 1),
        help="adapters vLLM keeps loaded at once; a request for another waits for its turn (vLLM's flag)")
    add("--max-lora-rank", type=pos_int, default=env("max_lora_rank", pos_int, 16),
        help="the highest rank of the served adapters (vLLM's flag)")
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--api-key", default=env("api_key", str, None),
                      help="require 'Authorization: Bearer KEY' on /v1/* (env SLO_ENGINE_API_KEY; in a pod "
                           "prefer --api-key-file: a process's environment is readable by its UID)")
    keys.add_argument("--api-key-file", metavar="PATH", default=env("api_key_file", str, None),
                      help="read the API key from this file (a mounted Secret), whitespace stripped")
    add("--max-waiting-requests", type=non_negative_int,
        default=env("max_waiting_requests", non_negative_int, DEFAULT_MAX_WAITING_REQUESTS),
        help="admitted requests beyond --max-num-seqs before answering 429")
    add("--request-timeout-s", type=pos_float, default=env("request_timeout_s", pos_float, DEFAULT_REQUEST_TIMEOUT_S))
    add("--drain-timeout-s", type=pos_float,
        default=env("drain_timeout_s", pos_float, DEFAULT_DRAIN_TIMEOUT_S),
        help="on SIGTERM, how long in-flight requests may take to finish")
    add("--max-body-bytes", type=pos_int, default=env("max_body_bytes", pos_int, DEFAULT_MAX_BODY_BYTES))
    add("--body-timeout-s", type=pos_float, default=env("body_timeout_s", pos_float, DEFAULT_BODY_TIMEOUT_S),
        help="a request body must arrive within this; a client trickling it gets 408")
    add("--admin-port", type=port_number, default=env("admin_port", port_number, None),
        help="FOR TESTS AND DEMOS: a separate admin listener on this port serving /admin/fault-injection "
             "(fail or delay requests); off by default; needs --admin-token-file")
    add("--admin-token-file", metavar="PATH", default=env("admin_token_file", str, None),
        help="the token the admin listener requires ('Authorization: Bearer TOKEN'), read from this file")
    add("--trace-exporter", choices=list(TRACE_EXPORTERS),
        default=env("trace_exporter", str, default_trace_exporter(env.environ)),
        help="where spans go (default: otlp when OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT is set, else none); "
             "OTEL_SDK_DISABLED=true turns tracing off whatever this says")
    add("--slo", default=env("slo", str, ""),
        help="SLO spec whose latency and goodput targets the engine judges every request against "
             "(default: the embedded slo.yaml)")
    add("--log-level", default=env("log_level", str, "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
