"""Files at the edges: generated files written atomically (a reader never sees half a file), and
secrets read from mounted files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, text: str) -> bool:
    """Write text to path via a temporary file and a rename; False if the file already held it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if _holds(path, text):
        return False
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())  # on disk before the rename: a power cut leaves old or new, never empty
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)
    return True


def _holds(path: Path, text: str) -> bool:
    """Whether the file already holds text (a directory, a non-UTF-8 file or none at all: no)."""
    try:
        return path.stat().st_size == len(text.encode("utf-8")) and path.read_text(encoding="utf-8") == text
    except (OSError, ValueError):
        return False


def _sync_directory(directory: Path) -> None:
    """Make the rename itself durable; a file system that cannot sync a directory is left as it is."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


MIN_SECRET_CHARS = 16


def read_secret(path: str) -> str:
    """A key or token from a file (a mounted Secret), whitespace stripped.

    ValueError saying why when it cannot be read or is too short to be a key: a
    pod started with an empty Secret must fail loudly, not serve without a key.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            secret = handle.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    if len(secret) < MIN_SECRET_CHARS:
        raise ValueError(f"holds {len(secret)} characters; a key needs at least {MIN_SECRET_CHARS}")
    return secret
