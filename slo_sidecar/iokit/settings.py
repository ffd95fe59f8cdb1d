"""One settings loader for both processes: flags, then PREFIX_* environment variables, then a YAML file.

Each setting is a name, a check and a help line. A check takes a value as YAML gives it (or as text,
from a flag or a variable: tried as a number first) and returns it, or raises ValueError with the
reason. Every bad value, wherever it came from, is a SettingsError naming its source (file:line, the
variable or the flag), the setting and the reason: the command prints it and exits 2.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Mapping

from slo_sidecar.spec.yaml_tree import YamlError, load

Check = Callable[[Any], Any]
Settings = Mapping[str, tuple[Check, str]]  # name -> (check, help)


class SettingsError(Exception):
    def __init__(self, source: str, field: str, reason: str):
        super().__init__(f"{source}: {field}: {reason}")
        self.source, self.field, self.reason = source, field, reason


# --- checks -----------------------------------------------------------------------------------------

def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def positive_number(value: Any) -> float:
    if not _number(value) or not 0 < value < float("inf"):
        raise ValueError(f"expected a number > 0, got {value!r}")
    return float(value)


def non_negative_number(value: Any) -> float:
    if not _number(value) or not 0 <= value < float("inf"):
        raise ValueError(f"expected a number >= 0, got {value!r}")
    return float(value)


def unit_interval(value: Any) -> float:
    if not _number(value) or not 0 <= value <= 1:
        raise ValueError(f"expected a number from 0 to 1, got {value!r}")
    return float(value)


def positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"expected an integer > 0, got {value!r}")
    return value


def count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected an integer >= 0, got {value!r}")
    return value


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    if value in (0, 1):
        return bool(value)
    raise ValueError(f"expected true or false, got {value!r}")


def string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def regex(value: Any) -> str:
    text = string(value)
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression ({exc}): {value!r}") from None
    return text


def label_value(value: Any) -> str:
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ValueError(f"expected a string, got {value!r}")
    return str(value)


def port(value: Any) -> int:
    number = positive_int(value)
    if number > 65535:
        raise ValueError(f"expected a port number up to 65535, got {value!r}")
    return number


def url(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ValueError(f"expected an http(s):// URL, got {value!r}")
    return value.rstrip("/")


def one_of(*choices: str) -> Check:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected {', '.join(choices[:-1])} or {choices[-1]}, got {value!r}")
        return value
    return check


# --- sources ----------------------------------------------------------------------------------------

def from_text(check: Check, text: str) -> Any:
    """Environment and flag values arrive as text: tried as numbers first, then as text.

    If nothing fits, the error is the one about the first reading ("got 0", not "got '0'").
    """
    first_error: ValueError | None = None
    for convert in (int, float, str):
        try:
            value = convert(text)
        except ValueError:
            continue  # not a number: the check's verdict is what counts
        try:
            return check(value)
        except ValueError as error:
            first_error = first_error or error
    raise first_error  # type: ignore[misc]  # str() always converts, so there was a verdict


def from_yaml(path: Path, settings: Settings) -> dict[str, Any]:
    """The file's settings, each checked; errors name the file and line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SettingsError(str(path), "(file)", f"cannot read: {exc.strerror or exc}") from None
    try:
        document = load(text, str(path))
    except YamlError as exc:
        raise SettingsError(exc.where, exc.field, exc.reason) from None
    if document.value is None:
        return {}
    if not isinstance(document.value, dict):
        raise SettingsError(document.where(()), "(file)", "expected a mapping of field: value")
    values = {}
    for field, value in document.value.items():
        where = document.where((field,))
        if field not in settings:
            raise SettingsError(where, str(field), f"unknown field; expected one of {', '.join(settings)}")
        try:
            values[field] = settings[field][0](value)
        except ValueError as exc:
            raise SettingsError(where, field, str(exc)) from None
    return values


def from_environ(environ: Mapping[str, str], prefix: str, settings: Settings) -> dict[str, Any]:
    """PREFIX_NAME variables, each checked; errors name the variable."""
    values = {}
    for field, (check, _) in settings.items():
        name = prefix + field.upper()
        if name in environ:
            try:
                values[field] = from_text(check, environ[name])
            except ValueError as exc:
                raise SettingsError(f"environment variable {name}", field, str(exc)) from None
    return values


def from_flags(flags: Mapping[str, str | None], settings: Settings) -> dict[str, Any]:
    """--name values (argparse's, as text; None: not given), each checked; errors name the flag."""
    values = {}
    for field, (check, _) in settings.items():
        text = flags.get(field)
        if text is not None:
            try:
                values[field] = from_text(check, text)
            except ValueError as exc:
                raise SettingsError("--" + field.replace("_", "-"), field, str(exc)) from None
    return values


def layered(settings: Settings, prefix: str, flags: Mapping[str, str | None], environ: Mapping[str, str],
            yaml_path: str | None = None) -> dict[str, Any]:
    """The values set anywhere: the YAML file's, overridden by the environment's, then by the flags'."""
    values = from_yaml(Path(yaml_path), settings) if yaml_path else {}
    values.update(from_environ(environ, prefix, settings))
    values.update(from_flags(flags, settings))
    return values
