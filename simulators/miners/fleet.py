"""A fleet of simulated miners in one asyncio loop: the public Python API.

    specs = make_specs(10, "Antminer S19j Pro:braiins:1,Antminer S21:luxos:1")
    async with SimFleet(specs, time_scale=20) as fleet:
        miner = await pyasic.get_miner(specs[0].address)
        fleet.set_fault(specs[1].address, "slow", delay_seconds=2)
        site_watts = fleet.true_total_watts()

Each miner listens on its own loopback IP on the firmware's standard ports
(4028 RPC; BOSer also 50051 gRPC), so pyasic's factory detects it unmodified.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Protocol

from controller.catalog import find_model
from drivers.open_files import raise_open_files_limit
from simulators.miners import faults as f
from simulators.miners.miner import FirmwareName, MinerSpec, SimMiner

__all__ = [
    "FleetError",
    "FleetTruth",
    "MinerSpec",
    "SimFleet",
    "SimMiner",
    "make_specs",
    "parse_mix",
    "read_inventory",
    "write_inventory",
]

FIRMWARES: tuple[FirmwareName, ...] = ("luxos", "braiins")


class FleetTruth(NamedTuple):
    """The fleet's true totals at one instant."""

    draw_watts: float
    hashrate_ths: float
    transitions: int  # sleep <-> awake changes since the fleet started (cumulative)
    sleeping: int
    miners: int


class FleetError(ValueError):
    """A bad fleet description (mix, base IP, address) or a failed bind."""


class MinerServers(Protocol):
    """The network listeners of one miner, for one firmware."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    def on_reboot(self) -> None: ...


def _servers_for(miner: SimMiner) -> MinerServers:
    if miner.firmware == "luxos":
        from simulators.miners.luxos_server import LuxosServers

        return LuxosServers(miner)
    from simulators.miners.boser import BoserServers

    return BoserServers(miner)


class SimFleet:
    """Simulated miners, their listeners, faults and the site meter."""

    def __init__(
        self,
        specs: Sequence[MinerSpec],
        *,
        time_scale: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        start_mining: bool = True,
        admin_port: int | None = None,
    ) -> None:
        if time_scale <= 0:
            raise FleetError(f"time_scale must be > 0, got {time_scale}")
        seen: set[str] = set()
        for spec in specs:
            if spec.address in seen:
                raise FleetError(f"address {spec.address} is used twice")
            seen.add(spec.address)
            if spec.firmware not in FIRMWARES:
                raise FleetError(
                    f"miner {spec.address}: firmware must be one of {FIRMWARES}, "
                    f"got {spec.firmware!r}"
                )
        self.specs = tuple(specs)
        self.time_scale = time_scale
        self.clock = clock
        self.miners: dict[str, SimMiner] = {}
        for spec in specs:
            try:
                model = find_model(spec.model, spec.firmware)
            except KeyError as exc:
                raise FleetError(f"miner {spec.address}: {exc.args[0]}") from None
            self.miners[spec.address] = SimMiner(
                spec, model, clock=clock, time_scale=time_scale, start_mining=start_mining
            )
        self._servers: dict[str, MinerServers] = {}
        self._requested_admin_port = admin_port
        self.admin_port: int | None = None
        self._admin: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind every listener; FleetError naming the address if one cannot bind."""
        if self._started:
            return
        raise_open_files_limit()
        self._started = True
        try:
            for address, miner in self.miners.items():
                servers = _servers_for(miner)
                self._servers[address] = servers
                try:
                    await servers.start()
                except OSError as exc:
                    raise FleetError(
                        f"cannot listen on {address} ({miner.firmware}): {exc.strerror or exc}"
                    ) from exc
            if self._requested_admin_port is not None:
                from simulators.miners.admin import AdminServer

                self._admin = AdminServer(self, port=self._requested_admin_port)
                try:
                    self.admin_port = await self._admin.start()
                except OSError as exc:
                    raise FleetError(
                        f"cannot listen on admin port 127.0.0.1:{self._requested_admin_port}: "
                        f"{exc.strerror or exc}"
                    ) from exc
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._admin is not None:
            await self._admin.close()
            self._admin = None
        await asyncio.gather(*(servers.close() for servers in self._servers.values()))
        self._servers.clear()
        self._started = False

    async def __aenter__(self) -> SimFleet:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ----------------------------------------------------------------- meter

    def true_total_watts(self) -> float:
        """The site meter: the sum of every miner's true draw."""
        return sum(miner.true_watts() for miner in self.miners.values())

    def truth(self) -> FleetTruth:
        """Totals of the fleet's true state now (what a benchmark scores against)."""
        now = self.clock()
        draw = ths = 0.0
        transitions = sleeping = 0
        for miner in self.miners.values():
            physics = miner.physics
            draw += physics.true_watts(now)
            ths += physics.hashrate_ths(now)
            transitions += physics.transitions
            sleeping += physics.is_sleeping(now)
        return FleetTruth(draw, ths, transitions, sleeping, len(self.miners))

    # ---------------------------------------------------------------- faults

    def _miner(self, address: str) -> SimMiner:
        try:
            return self.miners[address]
        except KeyError:
            raise FleetError(f"no simulated miner at {address!r}") from None

    def set_fault(self, address: str, fault: str, **params: Any) -> None:
        """Switch a fault on (see simulators.miners.faults); effective at once."""
        miner = self._miner(address)
        values = f.validate(fault, params)
        miner.faults.set(fault, values)
        if fault == f.UNREACHABLE:
            self._spawn(self._close_listeners(address))
        elif fault == f.REBOOT:
            miner.reboot()
            servers = self._servers.get(address)
            if servers is not None:
                servers.on_reboot()
            self._spawn(self._reboot(address))

    def clear_fault(self, address: str, fault: str | None = None) -> None:
        """Clear one fault, or all of them; listeners come back if they were down."""
        miner = self._miner(address)
        if fault is not None and fault not in f.FAULTS:
            raise f.FaultError(f"unknown fault {fault!r}; known: {', '.join(f.FAULTS)}")
        was_down = miner.faults.has(f.UNREACHABLE) or miner.faults.has(f.REBOOT)
        miner.faults.clear(fault)
        still_down = miner.faults.has(f.UNREACHABLE) or miner.faults.has(f.REBOOT)
        if was_down and not still_down:
            self._spawn(self._open_listeners(address))

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close_listeners(self, address: str) -> None:
        servers = self._servers.get(address)
        if servers is not None:
            await servers.close()

    async def _open_listeners(self, address: str) -> None:
        servers = self._servers.get(address)
        if servers is not None and self._started:
            await servers.start()

    async def _reboot(self, address: str) -> None:
        miner = self.miners[address]
        await self._close_listeners(address)
        await asyncio.sleep(miner.physics.boot_remaining_seconds(miner.now()))
        miner.faults.clear(f.REBOOT)
        if not miner.faults.has(f.UNREACHABLE):
            await self._open_listeners(address)

    def state(self) -> list[dict[str, object]]:
        return [miner.state() for miner in self.miners.values()]


# ------------------------------------------------------------------- specs


def parse_mix(mix: str) -> list[tuple[str, FirmwareName, float]]:
    """Parse 'MODEL:FIRMWARE:SHARE,...'; FleetError says which entry is wrong."""
    entries: list[tuple[str, FirmwareName, float]] = []
    for raw in mix.split(","):
        item = raw.strip()
        if not item:
            continue
        parts = item.rsplit(":", 2)
        if len(parts) != 3:
            raise FleetError(f"mix entry {item!r}: expected MODEL:FIRMWARE:SHARE")
        model, firmware, share_text = (p.strip() for p in parts)
        if firmware not in FIRMWARES:
            raise FleetError(f"mix entry {item!r}: firmware must be one of {', '.join(FIRMWARES)}")
        try:
            share = float(share_text)
        except ValueError:
            raise FleetError(f"mix entry {item!r}: share {share_text!r} is not a number") from None
        if not share > 0 or share == float("inf"):
            raise FleetError(f"mix entry {item!r}: share must be > 0")
        try:
            canonical = find_model(model, firmware).model
        except KeyError as exc:
            raise FleetError(f"mix entry {item!r}: {exc.args[0]}") from None
        entries.append((canonical, firmware, share))
    if not entries:
        raise FleetError("mix is empty; expected MODEL:FIRMWARE:SHARE[,...]")
    return entries


def loopback_addresses(count: int, base_ip: str) -> list[str]:
    """``count`` consecutive 127/8 addresses from base_ip, skipping .0 and .255 hosts."""
    try:
        base = ipaddress.IPv4Address(base_ip)
    except ValueError:
        raise FleetError(f"base IP {base_ip!r} is not an IPv4 address") from None
    if not base.is_loopback:
        raise FleetError(f"base IP {base_ip} is not in 127.0.0.0/8 (loopback)")
    out: list[str] = []
    value = int(base)
    last = int(ipaddress.IPv4Address("127.255.255.254"))
    while len(out) < count:
        if value > last:
            raise FleetError(f"{count} addresses from {base_ip} run past 127.255.255.254")
        if value & 0xFF not in (0, 255):
            out.append(str(ipaddress.IPv4Address(value)))
        value += 1
    return out


def make_specs(
    count: int, mix: str = "Antminer S19j Pro:braiins:1", base_ip: str = "127.1.0.1"
) -> list[MinerSpec]:
    """``count`` miners split by the mix's shares (largest remainder), on consecutive IPs."""
    if count < 0:
        raise FleetError(f"count must be >= 0, got {count}")
    entries = parse_mix(mix)
    addresses = loopback_addresses(count, base_ip)
    total_share = sum(share for _, _, share in entries)
    exact = [count * share / total_share for _, _, share in entries]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(entries)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: count - sum(counts)]:
        counts[i] += 1
    specs: list[MinerSpec] = []
    for (model, firmware, _), n in zip(entries, counts, strict=True):
        for _ in range(n):
            index = len(specs)
            specs.append(
                MinerSpec(
                    address=addresses[index],
                    model=model,
                    firmware=firmware,
                    name=f"sim-{index + 1:05d}",
                )
            )
    return specs


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def write_inventory(specs: Sequence[MinerSpec], path: str | Path) -> None:
    """Write a TOML inventory ([[miners]] tables) for controller.config.load_inventory."""
    lines = ["# hashgov inventory written by `hashgov sim miners`", ""]
    for spec in specs:
        lines.append("[[miners]]")
        lines.append(f"address = {toml_string(spec.address)}")
        if spec.name is not None:
            lines.append(f"name = {toml_string(spec.name)}")
        lines.append(f"model = {toml_string(spec.model)}")
        lines.append(f"firmware = {toml_string(spec.firmware)}")
        lines.append("")
    Path(path).write_text("\n".join(lines), encoding="utf-8")


def read_inventory(path: str | Path) -> list[MinerSpec]:
    """Specs from a TOML inventory (as write_inventory writes it); FleetError names the entry."""
    from controller.config import ConfigError, load_inventory

    try:
        entries = load_inventory(Path(path))
    except ConfigError as exc:
        raise FleetError(f"inventory {path}: {exc}") from None
    specs: list[MinerSpec] = []
    for i, entry in enumerate(entries):
        where = f"inventory {path}: miners[{i}]"
        if not isinstance(entry, dict):
            raise FleetError(f"{where}: must be a table")
        values = {key: entry.get(key) for key in ("address", "model", "firmware")}
        for key, value in values.items():
            if not isinstance(value, str) or not value:
                raise FleetError(f"{where}.{key}: needs a non-empty string, got {value!r}")
        name = entry.get("name")
        if name is not None and not isinstance(name, str):
            raise FleetError(f"{where}.name: must be a string, got {name!r}")
        firmware = values["firmware"]
        if firmware not in FIRMWARES:
            raise FleetError(f"{where}.firmware: must be one of {FIRMWARES}, got {firmware!r}")
        specs.append(MinerSpec(address=str(values["address"]), model=str(values["model"]),
                               firmware=firmware, name=name))
    if not specs:
        raise FleetError(f"inventory {path}: no [[miners]] entries")
    return specs
