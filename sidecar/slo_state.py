"""The SLO tracker's state file: taken up at start, saved every interval and at shutdown.

Nothing about the file may take the sidecar down or leave it half-restored. A file
that cannot be read, is not JSON, is another program's or another spec's, or is too
old is ignored with one log line, counted in sidecar_slo_state_discarded_total{reason},
and set aside as <file>.discarded (the next save would overwrite the evidence, and a
file the saves cannot read back would otherwise block them); the tracker starts afresh.
A save that fails (a full disk, a read-only volume) is counted in
sidecar_slo_state_save_errors_total and logged once per streak; the next interval
tries again. Saves go through a temporary file and a rename (slo_sidecar.iokit.files), so a
reader, or a sidecar killed mid-save, sees the old file or the new one, whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import stat
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

from slo_sidecar.iokit.files import write_atomically

from .slo_tracker import DISCARD_REASONS, Discarded, SloTracker, dumps

log = logging.getLogger("slo_sidecar.sidecar.slo_state")

# Five SLOs over 31 days are ~1.5 MB, plus the SLI series' label sets; a file far larger
# is not one the sidecar wrote, and parsing it could exhaust the container's memory.
MAX_STATE_BYTES = 32 * 1024 * 1024


class SloStateFile:
    def __init__(self, path: Path, tracker: SloTracker, registry: CollectorRegistry):
        self.path = Path(path)
        self.tracker = tracker
        self.discarded = Counter("sidecar_slo_state_discarded", "SLO state files not taken up at start, by "
                                 "reason; the SLO windows started afresh.", ["reason"], registry=registry)
        for reason in DISCARD_REASONS:
            self.discarded.labels(reason)
        self.save_errors = Counter("sidecar_slo_state_save_errors", "Failed saves of the SLO state file "
                                   "(the previous file, if any, is kept whole).", registry=registry)
        self.failed_saves = 0  # in a row
        self._writing: asyncio.Future | None = None

    # --- at start ---------------------------------------------------------------------------------

    def load(self, now: float) -> None:
        """Take up the saved state, or start afresh; never raises."""
        self._remove_leftovers()
        if not os.path.lexists(self.path):
            return
        try:
            discarded = self._read(now)
        except Exception as exc:  # a bug in the checks must not become a crash loop at every start
            log.exception("SLO state %s: unexpected error", self.path)
            discarded = Discarded("malformed", repr(exc))
        if discarded is None:
            log.info("SLO state restored from %s", self.path)
            return
        self.discarded.labels(discarded.reason).inc()
        log.warning("SLO state %s not used (%s): %s; starting afresh%s", self.path, discarded.reason,
                    discarded.detail, self._set_aside())

    def _read(self, now: float) -> Discarded | None:
        try:
            data = _read_bytes(self.path)
        except OSError as exc:
            return Discarded("unreadable", f"it cannot be read ({exc})")
        if len(data) > MAX_STATE_BYTES:
            return Discarded("malformed", f"it is larger than {MAX_STATE_BYTES} bytes")
        try:
            saved = json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, too deep or too long a number
            return Discarded("malformed", f"it is not JSON ({str(exc)[:200]})")
        return self.tracker.restore(saved, now)

    def _set_aside(self) -> str:
        """Move a discarded file to <file>.discarded; the words to add to the log line."""
        aside = self.path.with_name(self.path.name + ".discarded")
        try:
            if not stat.S_ISREG(os.lstat(self.path).st_mode):
                return ""
            os.replace(self.path, aside)
        except OSError as exc:
            return f" (could not set it aside: {exc})"
        return f"; set aside as {aside}"

    def _remove_leftovers(self) -> None:
        """Temporary files of saves a kill interrupted: one per kill would pile up otherwise."""
        # tempfile.mkstemp(prefix=".<name>.") adds 8 characters of [a-z0-9_] (slo_sidecar.iokit.files.write_atomically).
        pattern = re.compile(re.escape(f".{self.path.name}.") + "[a-z0-9_]{8}")
        removed = 0
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.path.parent):
                if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                        removed += 1
        if removed:
            log.info("removed %d temporary file(s) of an interrupted save of %s", removed, self.path)

    # --- saving -----------------------------------------------------------------------------------

    def save(self) -> None:
        """Save now (at shutdown); a failure is counted and logged, never raised."""
        text = self._serialise()
        if text is not None:
            self._write(text)

    async def keep_saving(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            # Serialised on the event loop, between two engine scrapes: a consistent state (a thread
            # reading the tracker while a scrape updates it could save tiers of unequal lengths).
            text = self._serialise()
            if text is not None:
                self._writing = asyncio.ensure_future(asyncio.to_thread(self._write, text))
                await asyncio.shield(self._writing)

    async def save_at_shutdown(self) -> None:
        """The last save, once a save in flight has finished: an older one must not land after it."""
        if self._writing is not None:
            with contextlib.suppress(Exception):
                await self._writing
        self.save()

    def _serialise(self) -> str | None:
        try:
            return dumps(self.tracker.snapshot())
        except Exception as exc:
            self._failed(exc)
            return None

    def _write(self, text: str) -> None:
        try:
            write_atomically(self.path, text)
        except Exception as exc:  # OSError mostly (ENOSPC, EROFS, EFBIG, EACCES); the next interval tries again
            self._failed(exc)
            return
        if self.failed_saves:
            log.info("SLO state saved again to %s after %d failed saves", self.path, self.failed_saves)
        self.failed_saves = 0

    def _failed(self, exc: Exception) -> None:
        self.save_errors.inc()
        if not self.failed_saves:
            log.warning("cannot save the SLO state to %s: %s; the last saved state is kept, and saves go on",
                        self.path, exc)
        self.failed_saves += 1


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, at most MAX_STATE_BYTES + 1; OSError for what is not a regular file (a FIFO
    would block the start, a directory cannot be read)."""
    with open(path, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK)) as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file")
        return handle.read(MAX_STATE_BYTES + 1)
