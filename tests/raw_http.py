"""HTTP as bytes on a socket: for requests no well-behaved client library would send.

Every request is sent with `Connection: close` semantics (or is malformed, and the
server closes): the answer is read to the end of the connection.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class RawAnswer:
    status: int | None  # None: the server closed without answering
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


def request_bytes(method: str, path: str, headers: list[tuple[str, str]], body: bytes = b"",
                  content_length: int | None = None) -> bytes:
    """A request as it goes on the wire; Content-Length is len(body) unless given (None: len, -1: omitted)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    length = len(body) if content_length is None else content_length
    if length >= 0 and not any(name.lower() == "transfer-encoding" for name, _ in headers):
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace") + body


def exchange(port: int, data: bytes, timeout_s: float = 30.0, half_close: bool = False) -> RawAnswer:
    """Send data, read until the server closes; the answer parsed.

    `half_close`: then say the client sends no more (what a client that stops mid-body looks like).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before it had read all: read what it said
        received = bytearray()
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return parse_answer(bytes(received))


def parse_answer(raw: bytes) -> RawAnswer:
    if not raw:
        return RawAnswer(None, {}, b"")
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = dechunk(body)
    return RawAnswer(status, headers, body)


def dechunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return bytes(out)
