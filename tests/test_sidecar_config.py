"""Sidecar settings: flags over environment over YAML over defaults; bad input exits 2, clearly."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from slo_sidecar.sidecar.config import ConfigError, SidecarConfig, add_arguments, load_config
from tests.helpers import REPO


def config_from(argv: list[str], environ: dict[str, str]) -> SidecarConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return load_config(parser.parse_args(argv), environ)


def test_precedence(tmp_path):
    yaml_file = tmp_path / "sidecar.yaml"
    yaml_file.write_text("port: 9500\nengine_interval_s: 2\nstale_after_s: 30\n")
    assert config_from([], {}) == SidecarConfig()
    from_file = config_from(["--config", str(yaml_file)], {})
    assert (from_file.port, from_file.engine_interval_s, from_file.stale_after_s) == (9500, 2.0, 30.0)
    env = {"SLO_SIDECAR_PORT": "9600", "SLO_SIDECAR_ENGINE_URL": "http://engine:8000/"}
    from_env = config_from(["--config", str(yaml_file)], env)
    assert (from_env.port, from_env.engine_url, from_env.engine_interval_s) == (9600, "http://engine:8000", 2.0)
    assert config_from(["--config", str(yaml_file), "--port", "9700"], env).port == 9700
    assert config_from([], {"SLO_SIDECAR_CONFIG": str(yaml_file)}).port == 9500


@pytest.mark.parametrize("text, message", [
    ("port: 9500\nengin_url: x\n", "sidecar.yaml:2: engin_url: unknown field"),
    ("engine_interval_s: -1\n", "sidecar.yaml:1: engine_interval_s: expected a number > 0, got -1"),
    ("engine_url: ftp://x\n", "sidecar.yaml:1: engine_url: expected an http(s):// URL"),
    ("port: [1, 2]\n", "sidecar.yaml:1: port: expected an integer > 0"),
    ("port: 1\n  bad: indent\n", "sidecar.yaml:2: (file): not valid YAML"),
    ("- a list\n", "sidecar.yaml:1: (file): expected a mapping"),
    ("dcgm_compat: maybe\n", "sidecar.yaml:1: dcgm_compat: expected true or false, got 'maybe'"),
    ("engine_process_pattern: '(unclosed'\n", "sidecar.yaml:1: engine_process_pattern: not a valid regular"),
    ("fake_gpu: -1\n", "sidecar.yaml:1: fake_gpu: expected an integer >= 0"),
    ("gpu_hourly_usd: free\n", "sidecar.yaml:1: gpu_hourly_usd: expected a number > 0"),
])
def test_bad_yaml_names_file_line_field_and_reason(tmp_path, text, message):
    yaml_file = tmp_path / "sidecar.yaml"
    yaml_file.write_text(text)
    with pytest.raises(ConfigError) as caught:
        config_from(["--config", str(yaml_file)], {})
    assert message in str(caught.value)


def test_gpu_and_pod_settings(tmp_path):
    yaml_file = tmp_path / "sidecar.yaml"
    yaml_file.write_text("dcgm_compat: true\ngpu_hourly_usd: 2.5\npod: from-file\n")
    config = config_from(["--config", str(yaml_file), "--fake-gpu", "2", "--engine-pid", "4321"],
                         {"SLO_SIDECAR_DCGM_COMPAT": "false", "POD_NAME": "from-downward-api",
                          "POD_NAMESPACE": "inference", "SLO_SIDECAR_CONTAINER": "engine"})
    assert (config.dcgm_compat, config.gpu_hourly_usd, config.fake_gpu, config.engine_pid) == (False, 2.5, 2, 4321)
    # The sidecar's own setting wins over the downward-API variable; without one, that variable is used.
    assert (config.pod, config.namespace, config.container) == ("from-file", "inference", "engine")
    assert config_from([], {"POD_NAME": "p-0"}).pod == "p-0"
    assert config_from(["--pod", "123"], {}).pod == "123"  # a number-looking name stays a name


def test_bad_environment_and_flags_are_named():
    with pytest.raises(ConfigError, match="environment variable SLO_SIDECAR_PORT: port: expected an integer > 0, got .many."):
        config_from([], {"SLO_SIDECAR_PORT": "many"})
    with pytest.raises(ConfigError, match="--engine-timeout-s: engine_timeout_s: expected a number > 0, got 0"):
        config_from(["--engine-timeout-s", "0"], {})


def test_command_exits_2_without_a_traceback(tmp_path):
    missing = tmp_path / "nope.yaml"
    result = subprocess.run([sys.executable, "-m", "slo_sidecar.app.cli", "sidecar", "--config", str(missing)],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"{missing}: (file): cannot read" in result.stderr and "Traceback" not in result.stderr


def test_the_probes_key_is_read_from_a_mounted_file(tmp_path):
    key_file = tmp_path / "api-key"
    key_file.write_text("  mounted-key-0123456789abcdef\n")  # a Secret's file may end in a newline
    config = config_from(["--engine-api-key-file", str(key_file)], {"SLO_SIDECAR_ENGINE_API_KEY": "from-env"})
    assert config.engine_api_key == "mounted-key-0123456789abcdef"  # the file wins over the environment
    key_file.write_text("short\n")
    with pytest.raises(ConfigError, match="engine_api_key_file"):
        config_from(["--engine-api-key-file", str(key_file)], {})
