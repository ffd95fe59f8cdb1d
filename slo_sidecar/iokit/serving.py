"""Starting an HTTP listener the way both processes want it: a taken port is one line, not a traceback."""

from __future__ import annotations

import sys

from aiohttp import web


async def listen(runner: web.AppRunner, host: str, port: int, command: str) -> None:
    """Start the runner's site on host:port; print `command: error: ...` and exit 2 if it cannot bind."""
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:  # port taken, address not ours, host unknown
        print(f"slo-sidecar {command}: error: cannot listen on {host}:{port}: {exc.strerror or exc}",
              file=sys.stderr)
        raise SystemExit(2) from None
