"""The boundary between the controller and miners: a small driver protocol.

A driver never raises for one bad miner: every outcome, including timeouts and
garbage replies, comes back as a typed value the controller can count.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeAlias


@dataclass(frozen=True, slots=True)
class MinerState:
    """One read of one miner. None means "the miner did not say"."""

    miner_id: str
    reachable: bool
    read_at_seconds: float  # monotonic clock of the controller
    is_mining: bool | None = None  # derived from hashrate/draw where firmware does not report it
    watts: float | None = None  # measured (firmware-reported) draw
    power_limit_watts: float | None = None
    hashrate_ths: float | None = None
    temperature_c: float | None = None
    fan_rpm: tuple[int, ...] = ()
    uptime_seconds: float | None = None
    hostname: str | None = None
    mac: str | None = None
    errors: tuple[str, ...] = ()
    error: str | None = None  # why the read failed (reachable=False)


class CommandKind(StrEnum):
    SET_POWER_LIMIT = "set_power_limit"
    STOP = "stop"
    RESUME = "resume"


class CommandOutcome(StrEnum):
    OK = "ok"  # sent and verified by readback
    REJECTED = "rejected"  # the miner (or pyasic) said no
    UNVERIFIED = "unverified"  # acknowledged, but readback does not show it
    TIMEOUT = "timeout"
    ERROR = "error"  # unreachable, garbage reply, unexpected exception


@dataclass(frozen=True, slots=True)
class CommandResult:
    miner_id: str
    kind: CommandKind
    outcome: CommandOutcome
    latency_seconds: float
    requested_watts: int | None = None
    detail: str = ""
    # set_power_limit: the limit the miner reads back (LuxOS quantises to a profile)
    applied_watts: int | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is CommandOutcome.OK


# A command sent and accepted, not yet read back: await it for the verified result.
Readback: TypeAlias = Callable[[], Awaitable[CommandResult]]


class MinerDriver(Protocol):
    """What the controller needs from one miner."""

    @property
    def miner_id(self) -> str: ...

    async def read_state(self) -> MinerState: ...

    async def set_power_limit(self, watts: int) -> CommandResult: ...

    async def stop(self) -> CommandResult: ...

    async def send_stop(self) -> CommandResult | Readback:
        """``stop`` in two halves: the failure, or once the miner accepted the stop,
        the readback that verifies it. On a trip the actuator sends every stop
        before it reads any back: the draw falls when a stop lands, not when it is
        verified."""
        ...

    async def resume(self) -> CommandResult: ...

    async def close(self) -> None:
        """Release what the driver keeps open between calls (connections)."""
        ...


async def close_drivers(drivers: Iterable[MinerDriver]) -> None:
    """Close every driver (their kept connections): at shutdown, end of a bench."""
    for driver in drivers:
        await driver.close()
