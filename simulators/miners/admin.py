"""Admin HTTP JSON API of a simulated fleet (loopback only, asyncio streams).

    GET    /miners                       every miner's state (true watts, phase, faults)
    GET    /meter                        {"true_total_watts": ...} (the site meter)
    GET    /truth                        totals: draw_watts, hashrate_ths, transitions
                                         (cumulative sleep<->awake), sleeping, miners
    POST   /fault   {"address", "fault", "params": {...}}   switch a fault on
    DELETE /fault   {"address", "fault"?}                   clear one fault / all faults

Replies are JSON; errors are {"error": "..."} with status 400/404/405.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING, Any

from simulators.miners.faults import FaultError

if TYPE_CHECKING:
    from simulators.miners.fleet import SimFleet

ADMIN_HOST = "127.0.0.1"
MAX_BODY_BYTES = 65_536
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


class AdminServer:
    def __init__(self, fleet: SimFleet, port: int = 0, host: str = ADMIN_HOST) -> None:
        self.fleet = fleet
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen; return the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body = await self._handle(reader)
        except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            status, body = 400, {"error": f"bad request: {exc}"}
        except ConnectionError:
            writer.close()
            return
        payload = json.dumps(body).encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        writer.write(head + payload)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader) -> tuple[int, Any]:
        request_line = (await reader.readline()).decode("latin-1").strip()
        parts = request_line.split()
        if len(parts) < 2:
            raise ValueError("no request line")
        method, path = parts[0].upper(), parts[1].split("?", 1)[0].rstrip("/") or "/"
        length = 0
        while True:
            line = (await reader.readline()).decode("latin-1").strip()
            if not line:
                break
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length > MAX_BODY_BYTES:
            raise ValueError("body too large")
        body = await reader.readexactly(length) if length else b""
        return self._route(method, path, body)

    def _route(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        fleet = self.fleet
        if path == "/miners":
            if method != "GET":
                return 405, {"error": "use GET /miners"}
            return 200, fleet.state()
        if path == "/meter":
            if method != "GET":
                return 405, {"error": "use GET /meter"}
            return 200, {"true_total_watts": round(fleet.true_total_watts(), 1),
                         "miners": len(fleet.miners)}
        if path == "/truth":
            if method != "GET":
                return 405, {"error": "use GET /truth"}
            return 200, fleet.truth()._asdict()
        if path == "/fault":
            if method not in ("POST", "DELETE"):
                return 405, {"error": "use POST or DELETE /fault"}
            try:
                request = json.loads(body or b"{}")
            except ValueError:
                return 400, {"error": "body must be JSON"}
            if not isinstance(request, dict) or not isinstance(request.get("address"), str):
                return 400, {"error": "body needs a string 'address'"}
            address = request["address"]
            if address not in fleet.miners:
                return 404, {"error": f"no simulated miner at {address!r}"}
            fault = request.get("fault")
            try:
                if method == "POST":
                    params = request.get("params") or {}
                    if not isinstance(fault, str) or not isinstance(params, dict):
                        return 400, {"error": "POST /fault needs 'fault' (string), 'params' (object)"}
                    fleet.set_fault(address, fault, **params)
                else:
                    if fault is not None and not isinstance(fault, str):
                        return 400, {"error": "'fault' must be a string"}
                    fleet.clear_fault(address, fault)
            except FaultError as exc:
                return 400, {"error": str(exc)}
            return 200, fleet.miners[address].state()
        return 404, {"error": f"no such endpoint {path}; try /miners, /meter, /truth, /fault"}
