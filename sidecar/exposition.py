"""A fast reader for the engine's /metrics: only the families asked for, correctly.

prometheus_client's parser builds every family of vLLM's ~50 KB exposition
(~7 ms on these machines); the sidecar needs a few dozen samples every second.
This reader looks at each line's metric name first and parses only the lines
it was asked for, with a fast path for the common case (no escapes) and a
careful one for label values with escaped quotes, backslashes and newlines.
An ExpositionReader also remembers a target's last layout: a scrape whose
every line starts as before has only its wanted values read (docs/sidecar.md).
It reads the Prometheus text format (0.0.4) and OpenMetrics 1.0 (timestamps
and exemplars are ignored; `# EOF` is required there, so a cut-off OpenMetrics
body is caught). A malformed wanted line, or a body cut off mid-line, raises
ExpositionError: the caller keeps its last good values.
"""

from __future__ import annotations

import copy
import math
from operator import itemgetter
from typing import Any, Callable, Iterable, NamedTuple

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


class Layout:
    """A scrape without its values: what a target's next scrape almost always repeats.

    `keys`: each wanted line's (name, labels), or None for a line of an unwanted name that shares a wanted
    family's prefix (or one past a cap); a scrape's values follow the same order. `line_starts`: what every
    line of the body starts with, or None when the layout cannot be checked that way (see `_line_starts`).
    """

    __slots__ = ("keys", "kept", "line_starts", "_pick", "_value_slices", "_by_name", "_capped")

    def __init__(self, keys: list[tuple[str, Labels] | None], line_starts: tuple[str, ...] | None = None,
                 wanted_lines: list[int] | None = None, heads: list[str] | None = None):
        self.keys = keys
        self.kept = [index for index, key in enumerate(keys) if key is not None]
        self.line_starts = line_starts
        self._pick = picker(wanted_lines or [])
        self._value_slices = [slice(len(head), None) for head in heads or []]
        self._by_name: dict[str, list[int]] | None = None
        self._capped: dict[int, Layout] = {}

    def values_of(self, lines: list[str]) -> list[float] | None:
        """The values of a body's lines when it has this layout; None when it may not."""
        if self.line_starts is None or len(lines) != len(self.line_starts) \
                or not all(map(str.startswith, lines, self.line_starts)):
            return None
        try:  # each wanted line is its head, a space and its value: nothing else to read
            return list(map(float, map(str.__getitem__, self._pick(lines), self._value_slices)))
        except ValueError:
            return None  # read line by line: the error, if it is one, names its line

    def indexes(self, name: str) -> list[int]:
        """Where the samples of one sample name are, in exposition order."""
        if self._by_name is None:
            self._by_name = {}
            for index in self.kept:
                self._by_name.setdefault(self.keys[index][0], []).append(index)  # type: ignore[index]
        return self._by_name.get(name, [])

    def capped(self, limit: int) -> Layout:
        """The same layout keeping only its first `limit` samples (the same object every scrape)."""
        layout = self._capped.get(limit)
        if layout is None:
            last_kept = set(self.kept[:limit])
            layout = self._capped[limit] = copy.copy(self)
            layout.keys = [key if index in last_kept else None for index, key in enumerate(self.keys)]
            layout.kept = self.kept[:limit]
            layout._by_name, layout._capped = None, {}
        return layout


def picker(indexes: list[int]) -> Callable[[list[Any]], tuple[Any, ...]]:
    """The items at those indexes, always as a tuple, picked in one C-level call where there are several
    (itemgetter returns a bare item for one index)."""
    if len(indexes) > 1:
        return itemgetter(*indexes)
    return lambda lines: tuple(lines[index] for index in indexes)


class Scrape(NamedTuple):
    """One scrape, read: its layout and a value for each of the layout's wanted lines."""

    layout: Layout
    values: list[float]

    @classmethod
    def of(cls, samples: Iterable[Sample]) -> Scrape:
        """Samples built by hand (tests, a saved pair of scrapes) as a scrape."""
        samples = list(samples)
        return cls(Layout([(s.name, s.labels) for s in samples]), [s.value for s in samples])

    def samples(self, names: Iterable[str] | None = None) -> list[Sample]:
        """The samples, of the given sample names only if given, in exposition order. Built on demand: a
        consumer that reads a few series does not pay for the rest."""
        layout = self.layout
        indexes = layout.kept if names is None else sorted(i for name in names for i in layout.indexes(name))
        keys, values = layout.keys, self.values
        return [Sample(*keys[i], values[i]) for i in indexes]  # type: ignore[misc]


class ExpositionReader:
    """Reads one target's scrapes. When every line of a scrape starts as the same line of the scrape before
    did (an engine's series rarely change), only the wanted values are read; that check and the read are
    C-level calls over the lines. Anything else, a new series or a changed label, is read line by line and
    becomes the layout."""

    def __init__(self, wanted: SampleFilter):
        self.wanted = wanted
        self._layout: Layout | None = None

    def read(self, text: str, openmetrics: bool = False) -> Scrape:
        lines = _body(text, openmetrics).split("\n")
        layout = self._layout
        values = None if layout is None else layout.values_of(lines)
        if values is not None:
            return Scrape(layout, values)  # type: ignore[arg-type]
        prefixes = self.wanted.prefixes
        wanted_lines = [index for index, line in enumerate(lines) if line.startswith(prefixes)]
        keys, values, heads = _read_lines([lines[index] for index in wanted_lines], self.wanted.names)
        starts = None if heads is None else _line_starts(lines, dict(zip(wanted_lines, heads)))
        self._layout = Layout(keys, starts, wanted_lines, heads)
        return Scrape(self._layout, values)


def parse(text: str, wanted: SampleFilter, openmetrics: bool = False) -> list[Sample]:
    """The samples of the wanted families, in exposition order (one scrape, no layout remembered)."""
    return ExpositionReader(wanted).read(text, openmetrics).samples()


def _body(text: str, openmetrics: bool) -> str:
    """The exposition's sample lines; a body cut off (mid-line, or before OpenMetrics' `# EOF`) raises."""
    if openmetrics:
        stripped = text.rstrip("\n")
        if not stripped.endswith("# EOF"):
            raise ExpositionError("truncated", "OpenMetrics body does not end with '# EOF'")
        return stripped[: -len("# EOF")]
    if text and not text.endswith("\n"):
        raise ExpositionError("truncated", "body does not end with a newline")
    return text


def _read_lines(lines: list[str], names: frozenset[str]
                ) -> tuple[list[tuple[str, Labels] | None], list[float], list[str] | None]:
    """Lines that start with a wanted prefix, each read in full: (their keys, their values, and each line
    up to and with its last space when that is all but its value, else None: a timestamp or an exemplar
    follows some value)."""
    keys: list[tuple[str, Labels] | None] = []
    values: list[float] = []
    reusable = True
    heads = _HEAD_CACHE
    for line in lines:
        values_text = None
        # Fast path, for a labelled sample seen before: everything up to the last '}' is its
        # name and label set, byte for byte the same as last scrape; the rest is its value.
        head, closed, tail = line.rpartition("}")
        known = heads.get(head, _UNKNOWN) if closed else _UNKNOWN
        if known is None:  # a name we were not asked for
            sample = None
        elif known is not _UNKNOWN:
            try:
                sample = Sample(known[0], known[1], float(tail))
            except ValueError:  # a timestamp follows, or junk
                sample = Sample(known[0], known[1], _parse_value(tail, line))
            values_text = tail
        else:
            read = _parse_line(line, names)
            sample, values_text = read if read is not None else (None, None)
            # Remember the head only if its label set really ends at this last '}' (not inside an exemplar).
            if closed and (sample is None or values_text == tail) and len(heads) < _HEAD_CACHE_MAX:
                heads[head] = None if sample is None else (sample.name, sample.labels)
        if sample is None:
            keys.append(None)
            values.append(math.nan)
            continue
        keys.append((sample.name, sample.labels))
        values.append(sample.value)
        # The line is its head and its value alone when nothing follows the value (no timestamp, no exemplar).
        reusable = reusable and values_text is not None and len(values_text.split()) == 1 \
            and line.endswith(values_text.strip())
    line_heads = [line[:line.rfind(" ") + 1] for line in lines] if reusable else None
    return keys, values, line_heads


def _line_starts(lines: list[str], wanted_heads: dict[int, str]) -> tuple[str, ...] | None:
    """What each line must start with for a later body to have the same layout, or None if no such check
    is sound. A wanted line: its head. A comment: '#'. Any other line: its name and the character after
    it ('{' or ' '), so it cannot have become a wanted name (`vllm:x ` does not start `vllm:x_total`). A blank
    line other than the last could turn into anything, and so could a line with no name to keep."""
    starts = []
    for index, line in enumerate(lines):
        head = wanted_heads.get(index)
        if head is not None:
            if not head:
                return None
            starts.append(head)
        elif line.startswith("#"):
            starts.append("#")
        elif not line:
            if index != len(lines) - 1:
                return None
            starts.append("")  # the body ends with a newline (checked before the split)
        else:
            ends = [at for at in (line.find("{"), line.find(" ")) if at > 0]
            if not ends:
                return None
            starts.append(line[:min(ends) + 1])
    return tuple(starts)


# An engine's label sets repeat byte for byte from one scrape to the next (a
# histogram's buckets differ only in `le`), so most lines are parsed once.
# Bounded: an engine that churns label values costs parsing, never unbounded memory.
_HEAD_CACHE: dict[str, tuple[str, Labels] | None] = {}
_HEAD_CACHE_MAX = 50_000
_UNKNOWN = object()


def _parse_line(line: str, names: frozenset[str]) -> tuple[Sample, str] | None:
    """(the sample, the text after its name and label set), or None for an unwanted name."""
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
    return Sample(name, (), _parse_value(line[space:], line)), line[space:]


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
