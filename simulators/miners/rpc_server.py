"""cgminer-style JSON RPC over TCP (port 4028), as pyasic speaks it.

One connection per command: the client writes ``{"command": "x", "parameter": "y"}``
(no terminator, no half-close), the server parses incrementally, writes one JSON
reply and closes. ``a+b+c`` multicommands are answered as
``{"a": [<reply a>], "b": [...], "id": 1}``. A connection closed before any byte
(pyasic's network scan does that) is simply dropped.

Faults applied here: ``blackhole`` (read, never answer), ``slow`` (delay the
reply), ``malformed`` (truncated JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from simulators.miners import faults as f
from simulators.miners.miner import SimMiner

RPC_PORT = 4028
MAX_REQUEST_BYTES = 65_536
READ_CHUNK_BYTES = 4_096

# (command, parameter or None) -> the full reply object (with STATUS)
CommandHandler = Callable[[str, str | None], dict[str, Any]]


def parse_request(buffer: bytes) -> tuple[str, str | None] | None:
    """The (command, parameter) in a complete request, or None if more bytes are needed.

    Raises ValueError for a complete but unusable request."""
    text = buffer.strip()
    if not text.endswith(b"}"):
        return None
    try:
        request = json.loads(text)
    except ValueError:
        return None  # maybe a '}' inside a string: wait for more
    if not isinstance(request, dict) or not isinstance(request.get("command"), str):
        raise ValueError("request must be a JSON object with a string 'command'")
    parameter = request.get("parameter")
    return request["command"], None if parameter is None else str(parameter)


def answer(handler: CommandHandler, command: str, parameter: str | None) -> dict[str, Any]:
    """Reply to a single command or a '+'-joined multicommand."""
    if "+" not in command:
        return handler(command, parameter)
    reply: dict[str, Any] = {}
    for part in command.split("+"):
        if part:
            reply[part] = [handler(part, parameter)]
    reply["id"] = 1
    return reply


def malformed(payload: bytes) -> bytes:
    """Truncated JSON: pyasic's decoder gives up on it (APIError 'Decode Error')."""
    return payload[: max(1, len(payload) // 2)] + b'\x07{"'


class RpcListener:
    """The 4028 listener of one miner."""

    def __init__(self, miner: SimMiner, handler: CommandHandler, port: int = RPC_PORT) -> None:
        self.miner = miner
        self.handler = handler
        self.port = port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def is_open(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._serve, self.miner.address, self.port, reuse_address=True, backlog=64
            )

    async def close(self) -> None:
        """Stop listening (new connections are refused) and drop open connections."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._exchange(reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = b""
        request: tuple[str, str | None] | None = None
        while request is None:
            chunk = await reader.read(READ_CHUNK_BYTES)
            if not chunk:
                return  # connect-then-close, or an incomplete request
            buffer += chunk
            if len(buffer) > MAX_REQUEST_BYTES:
                return
            try:
                request = parse_request(buffer)
            except ValueError:
                return
        faults = self.miner.faults
        if faults.has(f.BLACKHOLE):
            await reader.read()  # hold the connection until the client gives up
            return
        if faults.delay_seconds > 0:
            await asyncio.sleep(faults.delay_seconds)
        payload = json.dumps(answer(self.handler, *request)).encode()
        if faults.has(f.MALFORMED):
            payload = malformed(payload)
        writer.write(payload)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
