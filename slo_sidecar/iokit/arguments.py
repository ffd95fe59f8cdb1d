"""argparse value types shared by every command: a bad value is argparse's one-line error, exit 2."""

from __future__ import annotations

import argparse
import math
import urllib.parse
from typing import Any, Callable


def positive(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """`convert`, and the value must be > 0."""
    def parse(text: str) -> Any:
        value = convert(text)
        if not 0 < value < math.inf:  # NaN and infinity too
            raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
        return value

    parse.__name__ = convert.__name__
    return parse


def non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < math.inf:  # NaN too
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def port_number(text: str) -> int:
    """A TCP port a listener can bind: 1-65535."""
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, got {text!r}")
    return value


def http_url(text: str) -> str:
    """An http(s) URL with a host, as a base URL (a trailing slash dropped)."""
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise argparse.ArgumentTypeError(f"expected an http:// or https:// URL with a host, got {text!r}")
    return text.rstrip("/")


http_url.__name__ = "URL"
non_negative_int.__name__ = "non-negative int"
port_number.__name__ = "port"
