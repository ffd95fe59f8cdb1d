"""The manual: a short README that links into docs/, and docs/ built as a site by MkDocs (Material theme)
with --strict, so a broken link, a missing anchor or a page left out of the navigation fails here."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from slo_sidecar.app.docs import generated_pages
from tests.helpers import REPO

README = REPO / "README.md"
README_MAX_BYTES = 12 * 1024
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_docs_build_strictly(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert (tmp_path / "site" / "slos" / "index.html").is_file()


def test_the_readme_is_short_and_its_links_resolve():
    text = README.read_text()
    assert len(text.encode()) <= README_MAX_BYTES, f"README.md is {len(text.encode())} bytes: move the detail to docs/"
    broken = [target for target in LINK.findall(text) if "://" not in target
              and not (REPO / target.split("#")[0]).exists()]
    assert not broken, broken


def test_the_sites_home_page_is_the_readme():
    """docs/index.md is README.md with its links made relative to docs/ and without its section on the docs."""
    readme = README.read_text().replace("](docs/", "](")
    readme = readme[:readme.index("## Documentation")].rstrip() + "\n"
    home = re.sub(r"\n\n<!-- .* -->\n", "\n", (REPO / "docs" / "index.md").read_text(), count=1)
    assert home == readme, "docs/index.md has drifted from README.md: copy the README's text over"


def test_the_generated_pages_are_fresh():
    """The spec reference is rendered from slo.schema.json: a schema change without the page fails here."""
    stale = [str(path.relative_to(REPO)) for path, text in generated_pages().items()
             if not path.is_file() or path.read_text() != text]
    assert not stale, f"stale docs pages {stale}: run .venv/bin/python -m slo_sidecar.app.docs"


def test_the_spec_reference_has_a_row_for_every_field_the_schema_knows():
    """Every field of every object the schema describes, with `yes` where the schema requires it, and a
    link from each object-valued field to a section that exists."""
    import json

    page = (REPO / "docs" / "spec-reference.md").read_text()
    schema = json.loads((REPO / "slo_sidecar" / "spec" / "slo.schema.json").read_text())
    fields: list[tuple[str, bool]] = []

    def walk(node: dict) -> None:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node
        for name, child in node.get("properties", {}).items():
            fields.append((name, name in node.get("required", ())))
            walk(child)
        walk_items = node.get("items")
        if isinstance(walk_items, dict):
            walk(walk_items)

    walk(schema)
    rows = re.findall(r"^\| `([^`]+)` \| [^|]*?(?:\\\|[^|]*?)* \| (yes|) \|", page, re.MULTILINE)
    for name, required in fields:
        assert (name, "yes" if required else "") in rows, (name, required)
    headings = {re.sub(r"[^a-z0-9-]", "", h.lower().replace(" ", "-")) for h in re.findall(r"^## (.+)$", page, re.M)}
    assert set(re.findall(r"\]\(#([^)]+)\)", page)) <= headings
