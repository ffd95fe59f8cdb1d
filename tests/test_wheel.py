"""The wheel installs one top-level name, `slo_sidecar`, as vLLM and OpenTelemetry install one each, with
every module where package-dir puts it, and the layering contracts hold on the installed tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from the committed sources (a copy: no stale build/ of the checkout's in it), with this
    environment's setuptools (no download: --no-build-isolation)."""
    out = tmp_path_factory.mktemp("wheel")
    source = tmp_path_factory.mktemp("source")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in tracked.decode().split("\0"):
        if name and (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(source)], check=True, capture_output=True, timeout=300)
    (built,) = out.glob("slo_sidecar-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel in an empty venv (no dependencies: only what the wheel itself writes); its site-packages."""
    root = tmp_path_factory.mktemp("venv")
    venv.create(root, with_pip=False)
    (site,) = root.glob("lib/python*/site-packages")
    before = {path.name for path in site.iterdir()}
    subprocess.run([sys.executable, "-m", "pip", "--python", str(root / "bin" / "python"), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True, timeout=300)
    site.joinpath(".before").write_text("\n".join(sorted(before)))
    return site


def test_the_wheel_installs_exactly_one_top_level_name(installed, wheel):
    before = set(installed.joinpath(".before").read_text().split())
    added = {path.name for path in installed.iterdir()} - before - {".before", "__pycache__"}
    version = wheel.name.split("-")[1]
    assert added == {"slo_sidecar", f"slo_sidecar-{version}.dist-info"}, added
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
    assert tops == {"slo_sidecar", f"slo_sidecar-{version}.dist-info"}, tops


def test_every_module_of_the_checkout_is_in_the_wheel_where_package_dir_puts_it(installed):
    import tomllib
    mapped = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    expected = {str(path.relative_to(REPO)) for path in (REPO / "slo_sidecar").rglob("*.py")}
    for dotted, folder in mapped.items():
        expected |= {dotted.replace(".", "/") + "/" + str(path.relative_to(REPO / folder))
                     for path in (REPO / folder).glob("*.py")}
    shipped = {str(path.relative_to(installed)) for path in (installed / "slo_sidecar").rglob("*.py")}
    assert shipped == expected
    for data in ("slo.yaml", "stock-vllm.yaml", "slo.schema.json", "golden.yaml"):
        assert (installed / "slo_sidecar" / "spec" / data).is_file(), data


def test_the_entry_points_name_modules_of_the_one_package(installed):
    (entry_points,) = installed.glob("slo_sidecar-*.dist-info/entry_points.txt")
    targets = [line.split("=", 1)[1].strip() for line in entry_points.read_text().splitlines() if "=" in line]
    assert targets and all(target.startswith("slo_sidecar.") for target in targets), targets
    for target in targets:
        module = target.split(":")[0]
        assert (installed / (module.replace(".", "/") + ".py")).is_file(), target


def test_the_layering_contracts_hold_on_the_installed_tree(installed):
    """import-linter reads the installed package (not the checkout, whose folders package-dir maps)."""
    config = installed.parent / "layers.toml"
    config.write_text((REPO / "pyproject.toml").read_text())
    result = subprocess.run([str(LINT_IMPORTS), "--no-cache", "--config", str(config)], cwd=installed,
                            capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(installed)})
    assert result.returncode == 0 and "0 broken" in result.stdout, result.stdout + result.stderr
