"""Every command, given a bad flag value, port, path or permission, exits 2 with one line naming it,
never a traceback. Root ignores file modes, so the unwritable paths are ones no one can create (/proc)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.helpers import REPO

IMPOSSIBLE_PARENT = "/proc/slo-sidecar-cannot-exist"  # /proc takes no new entries, not even from root
IMPOSSIBLE_DIR = IMPOSSIBLE_PARENT + "/out"


def run_cli(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slo_sidecar.app.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout_s)


def a_file(tmp_path) -> str:
    path = tmp_path / "plain-file"
    path.write_text("not a directory\n")
    return str(path)


CASES = [
    # (command line, what the one line must name)
    (["engine", "--port", "70000"], "--port"),
    (["engine", "--port", "0"], "--port"),
    (["engine", "--metrics-port", "http"], "--metrics-port"),
    (["engine", "--kv-cache-gib", "inf"], "--kv-cache-gib"),
    (["engine", "--request-timeout-s", "nan"], "--request-timeout-s"),
    (["engine", "--api-key-file", "/nonexistent/key"], "--api-key-file"),
    (["engine", "--api-key", "a", "--api-key-file", "/etc/hostname"], "--api-key-file"),
    (["engine", "--admin-port", "9999"], "--admin-port"),
    (["engine", "--admin-token-file", "/etc/hostname"], "--admin-token-file"),
    (["engine", "--slo", "/nonexistent/slo.yaml"], "/nonexistent/slo.yaml"),
    (["engine", "--enable-lora", "--lora-modules", "medical=/nonexistent/adapter"], "--lora-modules"),
    (["engine", "--lora-modules", "medical={tmp}/adapter"], "--lora-modules"),
    (["build-model", "--lora", "Not A Name"], "--lora"),
    (["sidecar", "--port", "70000"], "port"),
    (["sidecar", "--engine-url", "not a url"], "engine_url"),
    (["sidecar", "--engine-api-key-file", "/nonexistent/key"], "engine_api_key_file"),
    (["sidecar", "--slo-state-file", IMPOSSIBLE_DIR + "/state.json"], "slo_state_file"),
    (["sidecar", "--config", "/nonexistent/sidecar.yaml"], "/nonexistent/sidecar.yaml"),
    (["sidecar", "--golden-baseline", "/nonexistent/golden.json"], "golden_baseline"),
    (["sidecar", "--golden-baseline", "{file}"], "golden_baseline"),
    (["sidecar", "--golden-baseline", "{baseline}"], "recorded on another golden set"),
    (["generate", "--out", IMPOSSIBLE_DIR], IMPOSSIBLE_PARENT),
    (["generate", "--out", "{file}"], "plain-file"),
    (["generate", "--out", "{tmp}/rules", "--dashboards-out", IMPOSSIBLE_DIR], IMPOSSIBLE_PARENT),
    (["generate", "--out", "{tmp}/rules", "--slo", "/nonexistent/slo.yaml"], "/nonexistent/slo.yaml"),
    (["validate", "--slo", "{file}"], "plain-file"),
    (["validate", "--url", "http://127.0.0.1:1", "--requests", "0"], "--requests"),
    (["validate", "--url", "http://127.0.0.1:1", "--concurrency", "-3"], "--concurrency"),
    (["validate", "--url", "not a url", "--report", ""], "--url"),
    (["preview", "--prometheus", "localhost:9090", "--out", "{tmp}/p"], "--prometheus"),
    (["validate", "--url", "http://127.0.0.1:{closed}", "--report", ""], "127.0.0.1"),
    (["preview", "--prometheus", "http://127.0.0.1:{closed}", "--out", "{tmp}/pages"], "--prometheus"),
    (["preview", "--prometheus", "http://127.0.0.1:1", "--out", "{tmp}/p", "--ranges", "1x"], "--ranges"),
    (["preview", "--prometheus", "http://127.0.0.1:1", "--out", "{tmp}/p", "--scrape-interval", "0"],
     "--scrape-interval"),
    (["demo", "--out", IMPOSSIBLE_DIR], IMPOSSIBLE_PARENT),
    (["demo", "--out", "{tmp}/demo", "--prometheus", "/nonexistent/prometheus"], "/nonexistent/prometheus"),
    (["demo", "--validate-requests", "0"], "--validate-requests"),
    (["demo", "--out", "{tmp}/demo", "--slo", "{file}"], "plain-file"),
    (["lab", "--out", "{file}"], "plain-file"),
    (["lab", "--json", IMPOSSIBLE_DIR + "/lab.json", "--no-live"], IMPOSSIBLE_PARENT),
]


def engine_in_process(argv: list[str], capsys, monkeypatch) -> subprocess.CompletedProcess:
    """`slo-sidecar engine` up to where it would start vLLM, in this process: vLLM's parser is imported once
    (~5 s a process). Reaching the start is a failure of its own."""
    from slo_sidecar.engine import launch
    from slo_sidecar.app import cli

    def started(*_: object) -> None:
        raise AssertionError(f"{argv}: the engine would start")

    monkeypatch.setattr(launch, "configure", started)
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, captured.out, captured.err)


def a_baseline_of_another_set(tmp_path) -> str:
    from slo_sidecar.spec.golden import GoldenBaseline

    path = tmp_path / "golden-baseline.json"
    path.write_text(GoldenBaseline("tiny-llama", "0000000000000000", (-7.6,)).to_json())
    return str(path)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


@pytest.mark.parametrize("args, named", CASES, ids=[" ".join(args)[:60] for args, _ in CASES])
def test_a_bad_value_exits_2_with_one_line_naming_it(args, named, tmp_path, capsys, monkeypatch):
    values = {"file": a_file(tmp_path), "tmp": str(tmp_path), "closed": str(closed_port()),
              "baseline": a_baseline_of_another_set(tmp_path)}
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    argv = [arg.format(**values) for arg in args]
    result = engine_in_process(argv, capsys, monkeypatch) if argv[0] == "engine" else run_cli(*argv)
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert errors and named in errors[-1], result.stderr[-2000:]
