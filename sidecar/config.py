"""Sidecar settings: command-line flags, then SLO_SIDECAR_* environment variables, then a YAML file.

Every bad value, wherever it came from, becomes a ConfigError that names its
source (the file and line, the variable, or the flag), the field and the reason;
the command prints it and exits 2, never with a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from slo_sidecar.iokit.files import read_secret

from .cost import DEFAULT_PROMPT_TOKEN_WEIGHT
from .engine_processes import DEFAULT_PATTERN
from .headroom import DEFAULT_TIME_CONSTANT_S, read_capacity_report

ENV_PREFIX = "SLO_SIDECAR_"
DEFAULT_PORT = 9400


class ConfigError(Exception):
    def __init__(self, source: str, field: str, reason: str):
        super().__init__(f"{source}: {field}: {reason}")


@dataclass(frozen=True)
class SidecarConfig:
    engine_url: str = "http://127.0.0.1:8000"
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    engine_interval_s: float = 1.0
    engine_timeout_s: float = 0.8
    engine_max_bytes: int = 4 * 1024 * 1024
    stale_after_s: float = 10.0
    rate_window_s: float = 60.0
    max_engine_series: int = 20_000
    gpu_interval_s: float = 2.0
    gpu_timeout_s: float = 1.5
    gpu_backoff_max_s: float = 60.0
    fake_gpu: int = 0
    gpu_scope: str = "pod"  # pod: only the pod's own GPUs; all: every GPU NVML sees (a whole node)
    dcgm_compat: bool = False
    engine_pid: int | None = None
    engine_process_pattern: str = DEFAULT_PATTERN
    pod: str = ""
    namespace: str = ""
    container: str = ""
    gpu_hourly_usd: float | None = None
    gpus: int = 1
    prompt_token_weight: float = DEFAULT_PROMPT_TOKEN_WEIGHT
    slo: str = ""  # the SLO spec; empty: the embedded default
    slo_state_file: str = ""
    slo_state_interval_s: float = 60.0
    probe_url: str = ""  # the engine's API (empty: engine_url), when its /metrics is served on another port
    probe_interval_s: float = 10.0  # 0: no probes
    probe_timeout_s: float = 5.0
    engine_api_key: str = ""
    engine_api_key_file: str = ""  # read at start into engine_api_key
    capacity: str = ""  # a capacity report (slo-sidecar capacity --json), read at start into capacity_rps
    capacity_rps: float | None = None
    headroom_time_constant_s: float = DEFAULT_TIME_CONSTANT_S
    log_level: str = "INFO"


def _positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"expected a number > 0, got {value!r}")
    return float(value)


def _non_negative_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"expected a number >= 0, got {value!r}")
    return float(value)


def _unit_interval(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"expected a number from 0 to 1, got {value!r}")
    return float(value)


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"expected an integer > 0, got {value!r}")
    return value


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected an integer >= 0, got {value!r}")
    return value


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    if value in (0, 1):
        return bool(value)
    raise ValueError(f"expected true or false, got {value!r}")


def _regex(value: Any) -> str:
    text = _string(value)
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression ({exc}): {value!r}") from None
    return text


def _label_value(value: Any) -> str:
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ValueError(f"expected a string, got {value!r}")
    return str(value)


def _port(value: Any) -> int:
    port = _positive_int(value)
    if port > 65535:
        raise ValueError(f"expected a port number up to 65535, got {value!r}")
    return port


def _url(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ValueError(f"expected an http(s):// URL, got {value!r}")
    return value.rstrip("/")


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _gpu_scope(value: Any) -> str:
    if value not in ("pod", "all"):
        raise ValueError(f"expected pod or all, got {value!r}")
    return value


def _log_level(value: Any) -> str:
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"expected one of DEBUG, INFO, WARNING, ERROR, got {value!r}")
    return value


# field -> (check, help)
FIELDS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "engine_url": (_url, "the engine's base URL; its /metrics is scraped"),
    "host": (_string, "address to listen on"),
    "port": (_port, "port for the sidecar's /metrics and /health"),
    "engine_interval_s": (_positive_number, "seconds between engine scrapes"),
    "engine_timeout_s": (_positive_number, "timeout of one engine scrape"),
    "engine_max_bytes": (_positive_int, "largest engine exposition read; larger is an error"),
    "stale_after_s": (_positive_number, "age after which a collector's last good values are withdrawn "
                                        "(at least two of its intervals)"),
    "rate_window_s": (_positive_number, "window of the derived rates and quantiles"),
    "max_engine_series": (_positive_int, "most samples taken from one engine scrape; the rest are dropped "
                          "and counted"),
    "gpu_interval_s": (_positive_number, "seconds between GPU (NVML) reads"),
    "gpu_timeout_s": (_positive_number, "timeout of one GPU read"),
    "gpu_backoff_max_s": (_positive_number, "longest wait between GPU retries while NVML is unavailable"),
    "fake_gpu": (_count, "serve this many FAKE H100s instead of NVML (demos and tests without a GPU)"),
    "gpu_scope": (_gpu_scope, "pod: report only the pod's GPUs (those the engine says it can use, else those "
                              "its processes hold); all: every GPU NVML sees"),
    "dcgm_compat": (_bool, "also serve dcgm-exporter's names and labels (DCGM_FI_DEV_GPU_UTIL, ...)"),
    "engine_pid": (_positive_int, "the engine's PID, for GPU memory attribution (default: found by "
                   "engine_process_pattern)"),
    "engine_process_pattern": (_regex, "regex matched against command lines to find the engine's processes"),
    "pod": (_label_value, "pod label on GPU series (default: $POD_NAME)"),
    "namespace": (_label_value, "namespace label on GPU series (default: $POD_NAMESPACE)"),
    "container": (_label_value, "container label on GPU series: the engine's container"),
    "gpu_hourly_usd": (_positive_number, "price of one GPU-hour in USD; turns on the cost metrics"),
    "gpus": (_positive_int, "GPUs the engine uses, for cost, when NVML cannot count them"),
    "prompt_token_weight": (_unit_interval, "what a prompt token weighs against a generated one (0-1) when the "
                            "pod's cost is shared among tenants by tokens"),
    "slo": (_string, "the SLO spec (ours or Sloth's prometheus/v1; default: the embedded slo.yaml)"),
    "slo_state_file": (_string, "where to keep the SLO windows across restarts (default: not kept)"),
    "slo_state_interval_s": (_positive_number, "seconds between saves of the SLO state file"),
    "probe_url": (_url, "the engine's API base URL for the probes (default: engine_url; set it where the engine "
                        "serves /metrics on a port of its own)"),
    "probe_interval_s": (_non_negative_number, "seconds between probe requests to the engine; an unanswered "
                         "one counts against the availability SLO as the requests users lost (0: no probes)"),
    "probe_timeout_s": (_positive_number, "how long a probe waits for its answer before it counts as unanswered"),
    "engine_api_key": (_string, "the engine's API key, for the probes (in a pod prefer engine_api_key_file)"),
    "engine_api_key_file": (_string, "read the engine's API key, for the probes, from this file (a mounted Secret)"),
    "capacity": (_string, "the capacity report written by `slo-sidecar capacity --json FILE`: turns on "
                 "slo_capacity_utilisation_ratio (request rate / its capacity_rps)"),
    "headroom_time_constant_s": (_positive_number, "time constant of the moving average smoothing slo_headroom_ratio"),
    "log_level": (_log_level, "DEBUG, INFO, WARNING or ERROR"),
}


def _from_text(check: Callable[[Any], Any], text: str) -> Any:
    """Environment and flag values arrive as text: try them as numbers first, then as text.

    If nothing fits, the error is the one about the first reading ("got 0", not "got '0'").
    """
    first_error: ValueError | None = None
    for convert in (int, float, str):
        try:
            value = convert(text)
        except ValueError:
            continue  # not a number: the check's verdict is what counts
        try:
            return check(value)
        except ValueError as error:
            first_error = first_error or error
    raise first_error  # type: ignore[misc]  # str() always converts, so there was a verdict


def load_yaml(path: Path) -> dict[str, Any]:
    """The file's fields, each checked, errors naming the file and line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), "(file)", f"cannot read: {exc.strerror or exc}") from None
    try:
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(where, "(file)", f"not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{path}:{node.start_mark.line + 1}", "(file)", "expected a mapping of field: value")
    values = {}
    for key_node, value_node in node.value:
        where = f"{path}:{key_node.start_mark.line + 1}"
        field = key_node.value
        if field not in FIELDS:
            raise ConfigError(where, field, f"unknown field; expected one of {', '.join(FIELDS)}")
        value = yaml.safe_load(yaml.serialize(value_node))
        try:
            values[field] = FIELDS[field][0](value)
        except ValueError as exc:
            raise ConfigError(where, field, str(exc)) from None
    return values


def load_config(args: argparse.Namespace, environ: dict[str, str] | None = None) -> SidecarConfig:
    """Defaults, overridden by the YAML file, then the environment, then the flags."""
    environ = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    config_path = getattr(args, "config", None) or environ.get(ENV_PREFIX + "CONFIG")
    if config_path:
        values.update(load_yaml(Path(config_path)))
    for field, (check, _) in FIELDS.items():
        name = ENV_PREFIX + field.upper()
        if name in environ:
            try:
                values[field] = _from_text(check, environ[name])
            except ValueError as exc:
                raise ConfigError(f"environment variable {name}", field, str(exc)) from None
    for field, (check, _) in FIELDS.items():
        flag_value = getattr(args, field, None)
        if flag_value is not None:
            try:
                values[field] = _from_text(check, flag_value)
            except ValueError as exc:
                raise ConfigError("--" + field.replace("_", "-"), field, str(exc)) from None
    # The downward-API variables the engine reads too, when the sidecar's own are not set.
    values.setdefault("pod", environ.get("POD_NAME", ""))
    values.setdefault("namespace", environ.get("POD_NAMESPACE", ""))
    if values.get("engine_api_key_file"):
        try:
            values["engine_api_key"] = read_secret(values["engine_api_key_file"])
        except ValueError as exc:
            raise ConfigError(f"engine_api_key_file {values['engine_api_key_file']}", "engine_api_key_file",
                              str(exc)) from None
    if values.get("capacity"):
        try:
            values["capacity_rps"] = read_capacity_report(values["capacity"])
        except ValueError as exc:
            raise ConfigError(f"capacity {values['capacity']}", "capacity", str(exc)) from None
    return dataclasses.replace(SidecarConfig(), **values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file of settings (flags and SLO_SIDECAR_* variables win over it)")
    for field, (_, help_text) in FIELDS.items():
        default = getattr(SidecarConfig(), field)
        parser.add_argument("--" + field.replace("_", "-"), dest=field, default=None,
                            help=f"{help_text} (default: {default})")
