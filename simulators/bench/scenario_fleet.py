"""The simulated fleet of a scenario run: in this process, or sharded over processes.

A small fleet runs in the runner's own event loop (`InProcessFleet`). A large
one would starve the runner (plant publisher, truth sampler) and answer the
controller's polls late, so it is split round-robin over several
`hashgov sim miners --inventory` processes (`ShardedFleet`), each serving its
share of the addresses; truth comes from each shard's admin `GET /truth` and
faults go to `POST /fault`. Both offer the same small interface, so the runner
does not care which it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from simulators.broker import free_port
from simulators.http_get import http_request
from simulators.miners.fleet import FleetError, FleetTruth, MinerSpec, SimFleet, write_inventory

# Above this many miners the fleet leaves the runner's process (see auto_shards).
IN_PROCESS_MAX_MINERS = 300
MINERS_PER_SHARD = 1_250
MAX_AUTO_SHARDS = 8
ADMIN_TIMEOUT_SECONDS = 5.0


def auto_shards(count: int) -> int:
    """0 (in process) for small fleets, else one process per ~1,250 miners, 2..8."""
    if count <= IN_PROCESS_MAX_MINERS:
        return 0
    return max(2, min(MAX_AUTO_SHARDS, math.ceil(count / MINERS_PER_SHARD)))


class BenchFleet(Protocol):
    specs: tuple[MinerSpec, ...]

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def truth(self) -> FleetTruth: ...
    async def set_fault(self, address: str, fault: str, **params: Any) -> None: ...
    def meter_watts(self) -> float: ...


def make_fleet(specs: Sequence[MinerSpec], time_scale: float, shards: int,
               workdir: Path) -> BenchFleet:
    """``shards`` = 0: automatic; 1: in this process; n > 1: n processes."""
    n = auto_shards(len(specs)) if shards == 0 else shards
    if n <= 1:
        return InProcessFleet(specs, time_scale)
    return ShardedFleet(specs, time_scale, min(n, len(specs)), workdir)


class InProcessFleet:
    def __init__(self, specs: Sequence[MinerSpec], time_scale: float) -> None:
        self.specs = tuple(specs)
        self.sim = SimFleet(specs, time_scale=time_scale)

    async def start(self) -> None:
        await self.sim.start()

    async def stop(self) -> None:
        await self.sim.stop()

    async def truth(self) -> FleetTruth:
        return self.sim.truth()

    async def set_fault(self, address: str, fault: str, **params: Any) -> None:
        self.sim.set_fault(address, fault, **params)

    def meter_watts(self) -> float:
        return self.sim.true_total_watts()


async def admin_request(port: int, method: str, path: str, body: Any = None) -> Any:
    """One JSON request to a shard's admin API on 127.0.0.1; FleetError on a non-200."""
    payload = b"" if body is None else json.dumps(body).encode()
    status, text = await http_request("127.0.0.1", port, method, path, payload,
                                      ADMIN_TIMEOUT_SECONDS)
    if status != 200:
        raise FleetError(f"shard admin :{port} {method} {path}: HTTP {status} "
                         f"{text[:200].decode(errors='replace')}")
    return json.loads(text)


class _Shard:
    def __init__(self, index: int, specs: Sequence[MinerSpec], inventory: Path) -> None:
        self.index = index
        self.specs = tuple(specs)
        self.inventory = inventory
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None


class ShardedFleet:
    """Simulated miners spread round-robin over ``shards`` `hashgov sim miners` processes."""

    def __init__(self, specs: Sequence[MinerSpec], time_scale: float, shards: int,
                 workdir: Path) -> None:
        self.specs = tuple(specs)
        self.time_scale = time_scale
        # round-robin: every shard gets the same model and firmware mix, so the same load
        self.shards = [
            _Shard(i, self.specs[i::shards], workdir / f"shard-{i}.toml") for i in range(shards)
        ]
        self._shard_of = {s.address: shard for shard in self.shards for s in shard.specs}
        self._meter_watts = 0.0
        self.start_timeout_seconds = 30.0 + len(self.specs) / 100.0

    async def start(self) -> None:
        try:
            await asyncio.gather(*(self._start_shard(shard) for shard in self.shards))
        except BaseException:
            await self.stop()
            raise
        self._meter_watts = (await self.truth()).draw_watts

    async def _start_shard(self, shard: _Shard) -> None:
        await asyncio.to_thread(write_inventory, shard.specs, shard.inventory)
        shard.port = free_port()
        log_path = shard.inventory.with_suffix(".log")
        # stderr to a file: a full pipe nobody reads would block the shard mid-run
        with log_path.open("wb") as log_file:
            shard.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "controller.cli", "sim", "miners",
                "--inventory", str(shard.inventory), "--time-scale", f"{self.time_scale:g}",
                "--admin-port", str(shard.port),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
            )
        assert shard.proc.stdout is not None
        try:  # the CLI prints one line once every listener is bound, then nothing
            line = await asyncio.wait_for(shard.proc.stdout.readline(), self.start_timeout_seconds)
        except TimeoutError:
            line = b""
        if not line.startswith(b"hashgov sim miners:"):
            if shard.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    shard.proc.kill()
            await shard.proc.wait()
            err = (await asyncio.to_thread(log_path.read_bytes)).decode(errors="replace")
            raise FleetError(
                f"simulator shard {shard.index} ({len(shard.specs)} miners from "
                f"{shard.specs[0].address}) did not start: "
                f"{(err or line.decode(errors='replace')).strip()[-500:] or 'timed out'} "
                f"(log: {log_path})")

    async def stop(self) -> None:
        procs = [s.proc for s in self.shards if s.proc is not None and s.proc.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 15.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    async def truth(self) -> FleetTruth:
        docs = await asyncio.gather(
            *(admin_request(shard.port, "GET", "/truth") for shard in self.shards))
        total = FleetTruth(
            draw_watts=sum(float(d["draw_watts"]) for d in docs),
            hashrate_ths=sum(float(d["hashrate_ths"]) for d in docs),
            transitions=sum(int(d["transitions"]) for d in docs),
            sleeping=sum(int(d["sleeping"]) for d in docs),
            miners=sum(int(d["miners"]) for d in docs),
        )
        self._meter_watts = total.draw_watts
        return total

    async def set_fault(self, address: str, fault: str, **params: Any) -> None:
        shard = self._shard_of.get(address)
        if shard is None:
            raise FleetError(f"no simulated miner at {address!r}")
        await admin_request(shard.port, "POST", "/fault",
                            {"address": address, "fault": fault, "params": params})

    def meter_watts(self) -> float:
        """The site meter: the draw of the latest truth sample (the sampler keeps it fresh)."""
        return self._meter_watts
