"""A fast reader for the engine's /metrics: only the families asked for, correctly.

prometheus_client's parser builds every family of vLLM's ~50 KB exposition
(~7 ms on these machines); the sidecar needs a few dozen samples every second.
This reader looks at each line's metric name first and parses only the lines
it was asked for, with a fast path for the common case (no escapes) and a
careful one for label values with escaped quotes, backslashes and newlines.
It reads the Prometheus text format (0.0.4) and OpenMetrics 1.0 (timestamps
and exemplars are ignored; `# EOF` is required there, so a cut-off OpenMetrics
body is caught). A malformed wanted line, or a body cut off mid-line, raises
ExpositionError: the caller keeps its last good values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

Labels = tuple[tuple[str, str], ...]

# The sample-name suffixes a family may carry (counters, histograms, summaries).
SAMPLE_SUFFIXES = ("", "_total", "_bucket", "_sum", "_count")


class ExpositionError(ValueError):
    """The exposition cannot be trusted; `reason` is a bounded label value."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: Labels  # in exposition order
    value: float

    def label(self, name: str, default: str = "") -> str:
        for key, value in self.labels:
            if key == name:
                return value
        return default


class SampleFilter:
    """The sample names that belong to the wanted families, for a quick membership test."""

    def __init__(self, families: Iterable[str]):
        self.families = frozenset(families)
        self.names = frozenset(family + suffix for family in self.families for suffix in SAMPLE_SUFFIXES)
        # A cheap C-level first test on each line; exact matching follows.
        self.prefixes = tuple(sorted(self.families))


def parse(text: str, wanted: SampleFilter, openmetrics: bool = False) -> list[Sample]:
    """The samples of the wanted families, in exposition order."""
    if openmetrics:
        stripped = text.rstrip("\n")
        if not stripped.endswith("# EOF"):
            raise ExpositionError("truncated", "OpenMetrics body does not end with '# EOF'")
        text = stripped[: -len("# EOF")]
    elif text and not text.endswith("\n"):
        raise ExpositionError("truncated", "body does not end with a newline")
    samples = []
    names, prefixes = wanted.names, wanted.prefixes
    for line in text.split("\n"):
        if not line.startswith(prefixes):
            continue
        brace = line.find("{")
        space = line.find(" ")
        if space < 0:
            raise ExpositionError("malformed", f"no value: {line[:120]!r}")
        if 0 <= brace < space:
            name = line[:brace]
            if name not in names:
                continue
            labels, rest = _parse_labels(line, brace)
        else:
            name = line[:space]
            if name not in names:
                continue
            labels, rest = (), line[space:]
        samples.append(Sample(name, labels, _parse_value(rest, line)))
    return samples


def _parse_labels(line: str, brace: int) -> tuple[Labels, str]:
    """(labels, the text after '}') for the label set starting at line[brace] == '{'."""
    if "\\" not in line:
        # No escapes: a value cannot contain '"', so '",' only ever ends a value, and
        # the set ends at the first '}' outside quotes (an even number of '"' before it).
        close = line.find("}", brace)
        while close >= 0 and line.count('"', brace, close) % 2:
            close = line.find("}", close + 1)
        if close < 0:
            raise ExpositionError("malformed", f"unclosed label set: {line[:120]!r}")
        body = line[brace + 1:close]
        labels = _LABEL_CACHE.get(body)
        if labels is None:
            labels = _split_labels(body, line)
            if len(_LABEL_CACHE) >= _LABEL_CACHE_MAX:
                _LABEL_CACHE.clear()
            _LABEL_CACHE[body] = labels
        return labels, line[close + 1:]
    return _parse_escaped_labels(line, brace)


# An engine's label sets repeat byte for byte from one scrape to the next (a
# histogram's buckets differ only in `le`), so most are parsed once. Bounded:
# an engine that churns label values costs a refill, never unbounded memory.
_LABEL_CACHE: dict[str, Labels] = {}
_LABEL_CACHE_MAX = 20_000


def _split_labels(body: str, line: str) -> Labels:
    labels = []
    body = body.rstrip(",")
    if body:
        for pair in body.split('",'):
            key, sep, value = pair.partition('="')
            if not sep or not key:
                raise ExpositionError("malformed", f"bad label {pair!r} in {line[:120]!r}")
            labels.append((key.strip(), value[:-1] if value.endswith('"') else value))
    return tuple(labels)


_UNESCAPE = {"\\": "\\", '"': '"', "n": "\n"}


def _parse_escaped_labels(line: str, brace: int) -> tuple[Labels, str]:
    labels = []
    i, end = brace + 1, len(line)
    while True:
        while i < end and line[i] in " ,":
            i += 1
        if i < end and line[i] == "}":
            return tuple(labels), line[i + 1:]
        equals = line.find('="', i)
        if equals < 0:
            raise ExpositionError("malformed", f"bad label set: {line[:120]!r}")
        key = line[i:equals].strip()
        i = equals + 2
        chars = []
        while True:
            if i >= end:
                raise ExpositionError("malformed", f"unterminated label value: {line[:120]!r}")
            char = line[i]
            if char == "\\":
                if i + 1 >= end:
                    raise ExpositionError("malformed", f"dangling escape: {line[:120]!r}")
                chars.append(_UNESCAPE.get(line[i + 1], "\\" + line[i + 1]))
                i += 2
            elif char == '"':
                i += 1
                break
            else:
                chars.append(char)
                i += 1
        if not key:
            raise ExpositionError("malformed", f"empty label name: {line[:120]!r}")
        labels.append((key, "".join(chars)))


def _parse_value(rest: str, line: str) -> float:
    """The value after the name or label set; a timestamp or an exemplar may follow."""
    text = rest.strip()
    exemplar = text.find(" # ")
    if exemplar >= 0:
        text = text[:exemplar]
    value_text = text.split(" ", 1)[0] if text else ""
    try:
        return float(value_text)
    except ValueError:
        raise ExpositionError("malformed", f"bad value {value_text!r} in {line[:120]!r}") from None
