"""A minimal HTTP/1.1 client for the simulators' own loopback endpoints (admin API,
the controller's /metrics): one request per connection, no redirects, no TLS."""

from __future__ import annotations

import asyncio
import contextlib


async def http_request(host: str, port: int, method: str, path: str, body: bytes = b"",
                       timeout_seconds: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of one request; OSError / TimeoutError when it cannot be made."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_seconds)
    try:
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode() + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout_seconds)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, content = raw.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        status = 0  # no status line: not HTTP
    return status, content
