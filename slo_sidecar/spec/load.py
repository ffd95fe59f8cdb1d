"""The spec's front door: read a file or a text in either format into the model.

`parse_spec(text, source)` gives a `Spec` or raises SpecError naming the file,
line, field and reason; `load_spec(path)` reads the file first. A `version:
prometheus/v1` document is a Sloth spec, anything else the native format.
"""

from __future__ import annotations

from pathlib import Path

from .fields import SpecError
from .model import Spec
from .native import parse_native
from .sloth import parse_sloth
from .yaml_tree import YamlError, load

__all__ = ["BUILT_IN", "DEFAULT_SPEC", "SpecError", "load_spec", "parse_spec"]

DEFAULT_SPEC = Path(__file__).resolve().parent / "slo.yaml"  # the embedded default
# Specs that ship with the package, by name: `--slo stock-vllm` reads only what an unmodified vLLM exports.
BUILT_IN = {"default": DEFAULT_SPEC, "stock-vllm": DEFAULT_SPEC.with_name("stock-vllm.yaml")}


def parse_spec(text: str, source: str) -> Spec:
    try:
        doc = load(text, source)
    except YamlError as exc:
        raise SpecError(exc.where, exc.field, exc.reason) from None
    if isinstance(doc.value, dict) and doc.value.get("version") == "prometheus/v1":
        return parse_sloth(doc)
    return parse_native(doc)


def load_spec(path: str) -> Spec:
    """Read and parse a spec file, or a built-in spec by name (a file of that name wins); errors name the file."""
    if path in BUILT_IN and not Path(path).exists():
        path = str(BUILT_IN[path])
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise SpecError(path, "(file)", f"cannot read: {exc.strerror or exc}") from None
    return parse_spec(text, path)
