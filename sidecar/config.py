"""Sidecar settings: command-line flags, then SLO_SIDECAR_* environment variables, then a YAML file.

Read by the project's one settings loader (slo_sidecar/iokit/settings.py): every bad value, wherever it
came from, becomes a ConfigError that names its source (the file and line, the variable, or the flag),
the field and the reason; the command prints it and exits 2, never with a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from slo_sidecar.iokit import settings as check
from slo_sidecar.iokit.files import read_secret
from slo_sidecar.iokit.settings import Settings, SettingsError, layered
from slo_sidecar.spec.golden import GoldenBaseline, GoldenError

from .cost import DEFAULT_PROMPT_TOKEN_WEIGHT
from .engine_processes import DEFAULT_PATTERN
from .headroom import DEFAULT_TIME_CONSTANT_S, read_capacity_report

ENV_PREFIX = "SLO_SIDECAR_"
DEFAULT_PORT = 9400


ConfigError = SettingsError  # the name the sidecar's callers know


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
    golden_baseline: str = ""  # `slo-sidecar validate --golden-out` file, read at start into golden
    golden: GoldenBaseline | None = None
    headroom_time_constant_s: float = DEFAULT_TIME_CONSTANT_S
    log_level: str = "INFO"


# field -> (check, help)
FIELDS: Settings = {
    "engine_url": (check.url, "the engine's base URL; its /metrics is scraped"),
    "host": (check.string, "address to listen on"),
    "port": (check.port, "port for the sidecar's /metrics and /health"),
    "engine_interval_s": (check.positive_number, "seconds between engine scrapes"),
    "engine_timeout_s": (check.positive_number, "timeout of one engine scrape"),
    "engine_max_bytes": (check.positive_int, "largest engine exposition read; larger is an error"),
    "stale_after_s": (check.positive_number, "age after which a poller's last good values are withdrawn "
                                        "(at least two of its intervals)"),
    "rate_window_s": (check.positive_number, "window of the derived rates and quantiles"),
    "max_engine_series": (check.positive_int, "most samples taken from one engine scrape; the rest are dropped "
                          "and counted"),
    "gpu_interval_s": (check.positive_number, "seconds between GPU (NVML) reads"),
    "gpu_timeout_s": (check.positive_number, "timeout of one GPU read"),
    "gpu_backoff_max_s": (check.positive_number, "longest wait between GPU retries while NVML is unavailable"),
    "fake_gpu": (check.count, "serve this many FAKE H100s instead of NVML (demos and tests without a GPU)"),
    "gpu_scope": (check.one_of("pod", "all"), "pod: report only the pod's GPUs (those the engine says it can "
                  "use, else those its processes hold); all: every GPU NVML sees"),
    "dcgm_compat": (check.boolean, "also serve dcgm-exporter's names and labels (DCGM_FI_DEV_GPU_UTIL, ...)"),
    "engine_pid": (check.positive_int, "the engine's PID, for GPU memory attribution (default: found by "
                   "engine_process_pattern)"),
    "engine_process_pattern": (check.regex, "regex matched against command lines to find the engine's processes"),
    "pod": (check.label_value, "pod label on GPU series (default: $POD_NAME)"),
    "namespace": (check.label_value, "namespace label on GPU series (default: $POD_NAMESPACE)"),
    "container": (check.label_value, "container label on GPU series: the engine's container"),
    "gpu_hourly_usd": (check.positive_number, "price of one GPU-hour in USD; turns on the cost metrics"),
    "gpus": (check.positive_int, "GPUs the engine uses, for cost, when NVML cannot count them"),
    "prompt_token_weight": (check.unit_interval, "what a prompt token weighs against a generated one (0-1) when the "
                            "pod's cost is shared among tenants by tokens"),
    "slo": (check.string, "the SLO spec (ours or Sloth's prometheus/v1; default: the embedded slo.yaml)"),
    "slo_state_file": (check.string, "where to keep the SLO windows across restarts (default: not kept)"),
    "slo_state_interval_s": (check.positive_number, "seconds between saves of the SLO state file"),
    "probe_url": (check.url, "the engine's API base URL for the probes (default: engine_url; set it where the engine "
                        "serves /metrics on a port of its own)"),
    "probe_interval_s": (check.non_negative_number, "seconds between probe requests to the engine; an unanswered "
                         "one counts against the availability SLO as the requests users lost (0: no probes)"),
    "probe_timeout_s": (check.positive_number,
                        "how long a probe waits for its answer before it counts as unanswered"),
    "engine_api_key": (check.string, "the engine's API key, for the probes (in a pod prefer engine_api_key_file)"),
    "engine_api_key_file": (check.string,
                            "read the engine's API key, for the probes, from this file (a mounted Secret)"),
    "golden_baseline": (check.string, "the golden scores recorded by `slo-sidecar validate --golden-out FILE` before "
                        "the rollout: turns on the golden probes (the set, interval and tolerance: the spec's "
                        "correctness section)"),
    "capacity": (check.string, "the capacity report written by `slo-sidecar capacity --json FILE`: turns on "
                 "slo_capacity_utilisation_ratio (request rate / its capacity_rps)"),
    "headroom_time_constant_s": (check.positive_number,
                                 "time constant of the moving average smoothing slo_headroom_ratio"),
    "log_level": (check.one_of("DEBUG", "INFO", "WARNING", "ERROR"), "DEBUG, INFO, WARNING or ERROR"),
}


def load_config(args: argparse.Namespace, environ: dict[str, str] | None = None) -> SidecarConfig:
    """Defaults, overridden by the YAML file, then the environment, then the flags."""
    environ = dict(os.environ if environ is None else environ)
    flags = {field: getattr(args, field, None) for field in FIELDS}
    values: dict[str, Any] = layered(FIELDS, ENV_PREFIX, flags, environ,
                                     getattr(args, "config", None) or environ.get(ENV_PREFIX + "CONFIG"))
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
    if values.get("golden_baseline"):
        path = values["golden_baseline"]
        try:
            with open(path, encoding="utf-8") as file:
                values["golden"] = GoldenBaseline.from_json(file.read(), path)
        except OSError as exc:
            raise ConfigError(f"golden_baseline {path}", "golden_baseline", exc.strerror or str(exc)) from None
        except GoldenError as exc:
            raise ConfigError(f"golden_baseline {path}", "golden_baseline", str(exc)) from None
    return dataclasses.replace(SidecarConfig(), **values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file of settings (flags and SLO_SIDECAR_* variables win over it)")
    for field, (_, help_text) in FIELDS.items():
        default = getattr(SidecarConfig(), field)
        parser.add_argument("--" + field.replace("_", "-"), dest=field, default=None,
                            help=f"{help_text} (default: {default})")
