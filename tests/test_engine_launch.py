"""The launcher's own flags (engine/launch.py): a bad one exits 2 naming it before vLLM is imported. The launched
engine's behaviour is tested through `slo-sidecar engine`: test_engine_lifecycle.py (the API key from a file,
drain, exit 0), test_engine_faults.py (stop while loading, exit 1 when vLLM's engine core dies), test_engine_api.py."""

from __future__ import annotations

import sys

import pytest

from slo_sidecar.engine.launch import parse


@pytest.mark.parametrize(("argv", "named"), [
    (["--max-waiting-requests", "many"], "--max-waiting-requests"),
    (["--admin-port", "9999"], "--admin-token-file"),
    (["--api-key-file", "/nonexistent/key"], "--api-key-file"),
])
def test_a_bad_flag_of_ours_exits_2_naming_it_before_vllm_loads(argv, named, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # an import of vLLM would fail: the check comes first
    with pytest.raises(SystemExit) as exited:
        parse(argv)
    assert exited.value.code == 2 and named in capsys.readouterr().err
