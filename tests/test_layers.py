"""The layering holds: the contracts in pyproject.toml pass, and each one fails on a deliberate violation.

Bottom up: the spec core `slo_spec` (PyYAML and the standard library only), the
I/O helpers `iokit`, then `engine`, `sidecar`, `alerts` and `dashboards`, then the
application `slo_sidecar`. import-linter checks the contracts; the core's
allow-list of outside imports is checked here on the same import graph (grimp).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

from tests.helpers import REPO

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PACKAGES = tuple(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["root_packages"])
CORE_MAY_IMPORT = {"yaml"}  # besides the standard library


def lint_imports(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`lint-imports` on the tree at cwd, importing the packages from there (not from the installed checkout)."""
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(cwd)})


def test_the_layering_contracts_hold():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_core_imports_pyyaml_and_the_standard_library_only():
    graph = grimp.build_graph("slo_spec", include_external_packages=True)
    outside = {imported.split(".")[0] for module in graph.modules if module.startswith("slo_spec")
               for imported in graph.find_modules_directly_imported_by(module)} - {"slo_spec"}
    assert outside - set(sys.stdlib_module_names) - {"__future__"} == CORE_MAY_IMPORT


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory) -> Path:
    """The packages and pyproject.toml, copied, so a test can break one import without touching the checkout."""
    root = tmp_path_factory.mktemp("layers")
    shutil.copy(REPO / "pyproject.toml", root)
    for package in PACKAGES:
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__", "generated"))
    return root


# (module that gets the import, the import, the id of the contract that must break)
VIOLATIONS = [
    ("engine/metrics.py", "import sidecar.config", "processes"),
    ("sidecar/rates.py", "import engine.metrics", "processes"),
    ("sidecar/cost.py", "import dashboards.model", "processes"),
    ("slo_spec/model.py", "import slo_sidecar.cli", "layers"),
    ("slo_spec/buckets.py", "import iokit.files", "layers"),
    ("iokit/files.py", "import alerts.rules", "layers"),
    ("alerts/rules.py", "import slo_sidecar.gate", "layers"),
    ("alerts/unit_tests.py", "import sidecar.rates", "generators"),
    ("engine/slo_judge.py", "import alerts.render", "processes-no-rules"),
    ("alerts/rules.py", "import dashboards.grafana", "panel-links"),
    ("alerts/render.py", "import grafana_foundation_sdk.builders.dashboard", "panel-links"),
    ("slo_spec/yaml_tree.py", "import slo_spec.load", "core-acyclic"),
]


def test_the_copied_tree_keeps_every_contract(tree_copy):
    """So that a broken contract below is the deliberate import's doing, not the copy's."""
    result = lint_imports(tree_copy)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("module, statement, contract", VIOLATIONS, ids=[f"{v[0]}: {v[1]}" for v in VIOLATIONS])
def test_a_deliberate_violation_breaks_its_contract(tree_copy, module, statement, contract):
    path = tree_copy / module
    original = path.read_text()
    path.write_text(original + f"\n{statement}  # a deliberate violation\n")
    try:
        result = lint_imports(tree_copy, "--contract", contract)
    finally:
        path.write_text(original)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout and statement.split()[1].split(".")[0] in result.stdout, result.stdout
