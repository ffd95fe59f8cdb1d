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

from typing import Iterable, NamedTuple

from .poller import PollError

Labels = tuple[tuple[str, str], ...]

# The sample-name suffixes a family may carry (counters, histograms, summaries).
SAMPLE_SUFFIXES = ("", "_total", "_bucket", "_sum", "_count")


class ExpositionError(PollError):
    """The exposition cannot be trusted (reason "truncated" or "malformed")."""


class Sample(NamedTuple):
    """A tuple, not a dataclass: a scrape builds a few hundred every second."""

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
    samples: list[Sample] = []
    append = samples.append
    names, prefixes = wanted.names, wanted.prefixes
    heads = _HEAD_CACHE
    for line in text.split("\n"):
        if not line.startswith(prefixes):
            continue
        # Fast path, for a labelled sample seen before: everything up to the last '}' is its
        # name and label set, byte for byte the same as last scrape; the rest is its value.
        head, closed, tail = line.rpartition("}")
        if closed:
            known = heads.get(head, _UNKNOWN)
            if known is None:
                continue  # a family we were not asked for
            if known is not _UNKNOWN:
                try:
                    value = float(tail)
                except ValueError:  # a timestamp follows, or junk
                    value = _parse_value(tail, line)
                append(Sample(known[0], known[1], value))
                continue
        sample = _parse_line(line, names)
        # Remember the head only if its label set really ends at this last '}' (not inside an exemplar).
        if closed and (sample is None or sample[1] == tail) and len(heads) < _HEAD_CACHE_MAX:
            heads[head] = None if sample is None else (sample[0].name, sample[0].labels)
        if sample is not None:
            append(sample[0])
    return samples


# An engine's label sets repeat byte for byte from one scrape to the next (a
# histogram's buckets differ only in `le`), so most lines are parsed once.
# Bounded: an engine that churns label values costs parsing, never unbounded memory.
_HEAD_CACHE: dict[str, tuple[str, Labels] | None] = {}
_HEAD_CACHE_MAX = 50_000
_UNKNOWN = object()


def _parse_line(line: str, names: frozenset[str]) -> tuple[Sample, str | None] | None:
    """(the sample, the text after its label set or None if unlabelled), or None for an unwanted name."""
    brace = line.find("{")
    space = line.find(" ")
    if space < 0:
        if line[:brace if brace >= 0 else len(line)] not in names:
            return None
        raise ExpositionError("malformed", f"no value: {line[:120]!r}")
    if 0 <= brace < space:
        name = line[:brace]
        if name not in names:
            return None
        labels, rest = _parse_labels(line, brace)
        return Sample(name, labels, _parse_value(rest, line)), rest
    name = line[:space]
    if name not in names:
        return None
    return Sample(name, (), _parse_value(line[space:], line)), None


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
        return _split_labels(line[brace + 1:close], line), line[close + 1:]
    return _parse_escaped_labels(line, brace)


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
