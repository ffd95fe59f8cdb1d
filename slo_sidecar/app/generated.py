"""Everything `slo-sidecar generate` writes from one spec, as {path: text}: one list for the command and the demo."""

from __future__ import annotations

from pathlib import Path

from slo_sidecar.spec.model import Spec


def golden_items(spec: Spec) -> int:
    """The size of the golden set the spec's correctness SLO probes with (0 without one): the canary's golden
    check passes once every item is scored. Raises GoldenError for a set that cannot be read."""
    from slo_sidecar.spec.golden import load_golden_set

    if not any(slo.sli.kind == "correctness" for slo in spec.slos):
        return 0
    return len(load_golden_set(spec.correctness.golden_set).items)


def generated_files(spec: Spec, rules_dir: Path, dashboards_dir: Path, k8s_dir: Path | None = None,
                    split: bool = False) -> dict[Path, str]:
    from slo_sidecar.alerts.render import render as render_rules
    from slo_sidecar.dashboards.definitions import dashboards
    from slo_sidecar.dashboards.grafana import datasources, render as render_dashboards

    from slo_sidecar.alerts.canary import render as render_canary

    files = {rules_dir / name: text for name, text in render_rules(spec, split).items()}
    files.update({rules_dir / name: text for name, text in render_canary(spec, golden_items(spec)).items()})
    files.update({dashboards_dir / name: text for name, text in render_dashboards(dashboards(spec)).items()})
    files[dashboards_dir / "provisioning" / "datasources.yaml"] = datasources()
    if k8s_dir is not None:
        from .k8s import render as render_k8s

        files.update({k8s_dir / name: text for name, text in render_k8s(spec, Path(spec.source).read_text()).items()})
    return files
