"""The docs pages generated from the code: the SLO spec reference from its JSON schema, and the metrics
reference from the families the engine and the sidecar serve.

    .venv/bin/python -m slo_sidecar.app.docs   (tests/test_docs.py fails while a committed page is stale)
"""

from __future__ import annotations

import json
from pathlib import Path

from slo_sidecar.iokit.files import write_atomically
from slo_sidecar.spec.reference import markdown

from . import metric_tables

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "slo_sidecar" / "spec" / "slo.schema.json"
SPEC_REFERENCE = REPO / "docs" / "spec-reference.md"
METRICS_REFERENCE = REPO / "docs" / "metrics.md"


def generated_pages() -> dict[Path, str]:
    """{path: text} of every generated docs page."""
    return {SPEC_REFERENCE: markdown(json.loads(SCHEMA.read_text())), METRICS_REFERENCE: metric_tables.markdown()}


def main() -> None:
    for path, text in generated_pages().items():
        write_atomically(path, text)
        print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
