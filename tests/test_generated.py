"""Everything `slo-sidecar generate` writes for the default spec is committed, and fresh."""

from __future__ import annotations

from slo_sidecar.app.generated import generated_files
from slo_sidecar.spec.load import DEFAULT_SPEC, load_spec
from tests.helpers import REPO

# In the order generated_files takes them: rules, dashboards, Kubernetes objects.
COMMITTED_DIRS = (REPO / "generated" / "alerts", REPO / "generated" / "dashboards",
                  REPO / "generated" / "kubernetes")


def test_committed_generated_files_are_what_the_default_spec_generates():
    expected = {str(path.relative_to(REPO)): text
                for path, text in generated_files(load_spec(str(DEFAULT_SPEC)), *COMMITTED_DIRS).items()}
    committed = {str(path.relative_to(REPO)): path.read_text()
                 for directory in COMMITTED_DIRS for path in directory.rglob("*") if path.is_file()}
    stale = sorted(name for name in expected.keys() | committed.keys() if expected.get(name) != committed.get(name))
    assert not stale, (f"generated files are stale ({stale}): run slo-sidecar generate --out generated/alerts "
                       "--dashboards-out generated/dashboards --k8s generated/kubernetes")
