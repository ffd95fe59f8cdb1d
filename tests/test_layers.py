"""The layering holds: the contracts in pyproject.toml pass, and each one fails on a deliberate violation.

Bottom up: the spec core `slo_sidecar.spec` (PyYAML and the standard library only), the
I/O helpers `slo_sidecar.iokit`, then `slo_sidecar.engine`, `.sidecar`, `.alerts` and `.dashboards`,
then the application `slo_sidecar.app`. import-linter checks the contracts on the package as it is
installed: the folders package-dir maps (engine/ to slo_sidecar/engine/, ...) are laid out the same way
in a copy. The core's allow-list of outside imports is checked here on the same import graph (grimp).
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
PACKAGE_DIRS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
CORE_MAY_IMPORT = {"yaml"}  # besides the standard library


def lint_imports(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`lint-imports` on the tree at cwd, importing the packages from there (not from the installed checkout)."""
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(cwd)})


def installed_path(repo_path: str) -> str:
    """Where a file of the checkout lies once installed: engine/asgi.py is slo_sidecar/engine/asgi.py."""
    for dotted, folder in PACKAGE_DIRS.items():
        if repo_path.startswith(folder + "/"):
            return dotted.replace(".", "/") + repo_path[len(folder):]
    return repo_path


def lay_out_as_installed(root: Path) -> Path:
    """slo_sidecar/ and each folder package-dir maps, copied into root where the wheel puts them."""
    ignore = shutil.ignore_patterns("__pycache__", "generated")
    shutil.copy(REPO / "pyproject.toml", root)
    shutil.copytree(REPO / "slo_sidecar", root / "slo_sidecar", ignore=ignore)
    for dotted, folder in PACKAGE_DIRS.items():
        shutil.copytree(REPO / folder, root / dotted.replace(".", "/"), ignore=ignore)
    return root


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory) -> Path:
    """The package as installed, so a test can break one import without touching the checkout."""
    return lay_out_as_installed(tmp_path_factory.mktemp("layers"))


def test_the_layering_contracts_hold(tree_copy):
    result = lint_imports(tree_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_core_imports_pyyaml_and_the_standard_library_only():
    graph = grimp.build_graph("slo_sidecar", include_external_packages=True)
    outside = {imported.split(".")[0] if not imported.startswith("slo_sidecar.") else imported
               for module in graph.modules if module.startswith("slo_sidecar.spec")
               for imported in graph.find_modules_directly_imported_by(module)}
    outside = {name for name in outside if not name.startswith("slo_sidecar.spec")}
    assert outside - set(sys.stdlib_module_names) - {"__future__"} == CORE_MAY_IMPORT


# (module that gets the import, the import, the id of the contract that must break)
VIOLATIONS = [
    ("engine/metrics.py", "import slo_sidecar.sidecar.config", "processes"),
    ("sidecar/rates.py", "import slo_sidecar.engine.metrics", "processes"),
    ("sidecar/cost.py", "import slo_sidecar.dashboards.model", "processes"),
    ("slo_sidecar/spec/model.py", "import slo_sidecar.app.cli", "layers"),
    ("slo_sidecar/spec/buckets.py", "import slo_sidecar.iokit.files", "layers"),
    ("slo_sidecar/iokit/files.py", "import slo_sidecar.alerts.rules", "layers"),
    ("alerts/rules.py", "import slo_sidecar.app.gate", "layers"),
    ("alerts/unit_tests.py", "import slo_sidecar.sidecar.rates", "generators"),
    ("engine/slo_judge.py", "import slo_sidecar.alerts.render", "processes-no-rules"),
    ("alerts/rules.py", "import slo_sidecar.dashboards.grafana", "panel-links"),
    ("alerts/render.py", "import grafana_foundation_sdk.builders.dashboard", "panel-links"),
    ("slo_sidecar/spec/yaml_tree.py", "import slo_sidecar.spec.load", "core-acyclic"),
]


@pytest.mark.parametrize("module, statement, contract", VIOLATIONS, ids=[f"{v[0]}: {v[1]}" for v in VIOLATIONS])
def test_a_deliberate_violation_breaks_its_contract(tree_copy, module, statement, contract):
    path = tree_copy / installed_path(module)
    original = path.read_text()
    path.write_text(original + f"\n{statement}  # a deliberate violation\n")
    try:
        result = lint_imports(tree_copy, "--contract", contract)
    finally:
        path.write_text(original)
    assert result.returncode == 1, result.stdout + result.stderr
    imported = statement.split()[1]
    # named as the contract's report names it: outside packages by their top name, a sibling relatively
    named = imported.split(".")[0] if not imported.startswith("slo_sidecar.") else (
        "." + imported.rsplit(".", 1)[1] if contract == "core-acyclic" else imported)
    assert "BROKEN" in result.stdout and named in result.stdout, result.stdout
