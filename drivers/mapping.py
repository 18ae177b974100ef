"""Pure mapping from pyasic's MinerData to hashgov's MinerState (no I/O).

Kept apart from the driver so each rule is unit-tested without sockets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from drivers.base import MinerState


class FirmwareKind(StrEnum):
    LUXOS = "luxos"
    BRAIINS = "braiins"
    OTHER = "other"  # detected by pyasic.get_miner, neither of the above


# What each backend must be asked for (pyasic DataOptions values), and why:
#  LuxOS (one RPC multicommand stats+power+config+profiles+fans):
#    hashboards     -> per-board chain_rate (MinerData.hashrate sums them; the
#                      summary path is bugged in 0.79 and always None), temps
#    wattage        -> POWER[0].Watts
#    wattage_limit  -> config + profiles (active profile's watts)
#    fans, uptime   -> FANS, STATS[1].Elapsed
#    is_mining is NOT asked: LuxOS 0.79 does not implement it (always True).
#  BOSer: every gRPC call is a new HTTP/2 connection in pyasic 0.79, so a regular
#  read asks only for what the controller needs — RPC summary+devs+tunerstatus
#  (hashrate "MHS 1m", is_mining from devs "MHS 5s", uptime, errors) plus gRPC
#  GetMinerStats (wattage) and GetActivePerformanceMode (wattage_limit, because
#  "config" is not asked). Every Nth read (DriverSettings.detail_every_reads) also
#  asks GetHashboards (per-board hashrate, temperatures) and GetCoolingState
#  (fans); hostname+mac (GetMinerDetails) only until known.
LUXOS_READ: tuple[str, ...] = ("hashboards", "wattage", "wattage_limit", "fans", "uptime")
BRAIINS_READ: tuple[str, ...] = (
    "hashrate",
    "wattage",
    "wattage_limit",
    "is_mining",
    "uptime",
    "errors",
)
BRAIINS_DETAIL: tuple[str, ...] = ("hashboards", "fans")
BRAIINS_IDENTITY: tuple[str, ...] = ("hostname", "mac")
OTHER_READ: tuple[str, ...] = (
    "hashboards",
    "hashrate",
    "wattage",
    "wattage_limit",
    "fans",
    "uptime",
    "is_mining",
    "hostname",
    "mac",
)
# Narrow readbacks after a command.
POWER_LIMIT_READBACK: tuple[str, ...] = ("wattage_limit",)


def mining_readback(firmware: FirmwareKind) -> tuple[str, ...]:
    if firmware is FirmwareKind.LUXOS:
        return ("hashboards", "wattage")
    if firmware is FirmwareKind.BRAIINS:
        return ("hashrate", "wattage", "is_mining")  # RPC + one gRPC call
    return ("hashboards", "hashrate", "wattage", "is_mining")


def firmware_reports_mining(firmware: FirmwareKind) -> bool:
    """Whether pyasic's is_mining means anything for this backend (LuxOS: always True)."""
    return firmware is FirmwareKind.BRAIINS


@dataclass(frozen=True, slots=True)
class MiningThresholds:
    """Where "mining" starts, for firmware that does not say (and as a cross-check)."""

    min_mining_ths: float = 1.0  # below this the miner is not producing hashes
    idle_watts: float = 55.0  # at or below this the miner is asleep (sleep draw + noise)

    @classmethod
    def for_model(cls, sleep_watts: int, nameplate_ths: float) -> MiningThresholds:
        return cls(
            min_mining_ths=max(0.5, nameplate_ths * 0.01),
            idle_watts=1.5 * sleep_watts + 10.0,
        )


def derive_is_mining(
    *,
    reported: bool | None,
    firmware_reports: bool,
    hashrate_ths: float | None,
    watts: float | None,
    thresholds: MiningThresholds,
) -> bool | None:
    """Is the miner producing hashes?

    Firmware that reports it (BOSer: devs "MHS 5s" > 0) is believed when it says
    False. Otherwise hashrate decides (a booting miner draws power but hashes
    nothing: not mining); without hashrate, draw above the idle floor decides;
    with neither, the firmware's own word, else unknown (None).
    """
    if firmware_reports and reported is False:
        return False
    if hashrate_ths is not None:
        return hashrate_ths >= thresholds.min_mining_ths
    if watts is not None:
        return watts > thresholds.idle_watts
    if firmware_reports:
        return reported
    return None


def _finite(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def hashrate_to_ths(hashrate: Any) -> float | None:
    """A pyasic AlgoHashRate (any unit) in TH/s; None if absent or unparseable."""
    if hashrate is None:
        return None
    try:
        unit = hashrate.unit
        return _finite(hashrate.into(unit.TH).rate)
    except Exception:
        return _finite(hashrate)  # pyasic's SHA256 default unit is TH/s


def _fan_rpms(fans: Any) -> tuple[int, ...]:
    rpms: list[int] = []
    for fan in fans or ():
        speed = _finite(getattr(fan, "speed", None))
        if speed is not None:
            rpms.append(int(speed))
    return tuple(rpms)


def _errors(errors: Any) -> tuple[str, ...]:
    out: list[str] = []
    for err in errors or ():
        message = getattr(err, "error_message", None)
        out.append(str(message if message is not None else err))
    return tuple(out)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def has_any_reading(state: MinerState) -> bool:
    """pyasic turns a refused/closed/garbage port into all-None fields, not an error.
    Only power-relevant fields count (draw, power limit, hashrate): a garbled reply
    that yields fan speeds alone says nothing about what the miner draws."""
    return any(v is not None for v in (state.watts, state.power_limit_watts, state.hashrate_ths))


def state_from_data(
    miner_id: str,
    data: Any,
    *,
    read_at_seconds: float,
    firmware: FirmwareKind,
    thresholds: MiningThresholds,
    asked: tuple[str, ...],
    hostname: str | None = None,
    mac: str | None = None,
) -> MinerState:
    """Map one pyasic MinerData to a MinerState.

    A reply with no usable field at all (what pyasic returns for a closed port
    or undecodable replies) becomes reachable=False.
    """
    hashrate_ths = hashrate_to_ths(getattr(data, "hashrate", None))
    watts = _finite(getattr(data, "wattage", None))
    reported = getattr(data, "is_mining", None) if "is_mining" in asked else None
    state = MinerState(
        miner_id=miner_id,
        reachable=True,
        read_at_seconds=read_at_seconds,
        is_mining=derive_is_mining(
            reported=reported if isinstance(reported, bool) else None,
            firmware_reports=firmware_reports_mining(firmware) and "is_mining" in asked,
            hashrate_ths=hashrate_ths,
            watts=watts,
            thresholds=thresholds,
        ),
        watts=watts,
        power_limit_watts=_finite(getattr(data, "wattage_limit", None)),
        hashrate_ths=hashrate_ths,
        temperature_c=_finite(getattr(data, "temperature_avg", None)),
        fan_rpm=_fan_rpms(getattr(data, "fans", None)),
        uptime_seconds=_finite(getattr(data, "uptime", None)),
        hostname=_text(getattr(data, "hostname", None)) or hostname,
        mac=_text(getattr(data, "mac", None)) or mac,
        errors=_errors(getattr(data, "errors", None)),
    )
    if not has_any_reading(state):
        return unreachable(
            miner_id, read_at_seconds, "no data in reply (port closed, refused or undecodable)"
        )
    return state


def unreachable(miner_id: str, read_at_seconds: float, error: str) -> MinerState:
    return MinerState(
        miner_id=miner_id, reachable=False, read_at_seconds=read_at_seconds, error=error
    )
