"""The SLO spec core: the model, its two readers (native and Sloth), YAML with line numbers,
the schema, the default spec and the known bucket tables.

The bottom layer: PyYAML and the standard library only, and no import of any
other package of this project (tests/test_layers.py checks both). Front door:
`slo_sidecar.spec.load` (`load_spec`, `parse_spec`, `DEFAULT_SPEC`, `SpecError`).
"""

__version__ = "0.1.0"  # the project's version, here so that every layer can name it
