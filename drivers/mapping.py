"""Pure mapping from pyasic's MinerData (and, for the lean BOSer read, a bosminer
RPC multicommand reply) to hashgov's MinerState (no I/O).

Kept apart from the driver so each rule is unit-tested without sockets.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
#  BOSer: pyasic 0.79 opens a new HTTP/2 connection (plus a Login when the
#  token is stale) for every gRPC call, which made a BOSer read cost ~5x a LuxOS
#  one in CPU. A regular read therefore skips get_data and gRPC altogether: ONE
#  bosminer RPC multicommand summary+devs+tunerstatus (BOSMINER_LEAN_COMMANDS,
#  mapped by state_from_bosminer_rpc) carries everything BRAIINS_READ names —
#  hashrate ("MHS 1m"), is_mining (devs "MHS 5s"), uptime, errors, and from
#  tunerstatus the draw (ApproximateMinerPowerConsumption) and the power limit
#  (PowerLimit). Command readbacks ask only for those fields, so they are lean too.
#  (bench poll, 1,000 BOSer miners: ~4-5 s -> ~0.5 s per regular poll.)
#  Every Nth read (DriverSettings.detail_every_reads) still goes through get_data
#  and adds gRPC GetHashboards (per-board hashrate, temperatures) and
#  GetCoolingState (fans), plus GetMinerStats/GetActivePerformanceMode for
#  wattage/wattage_limit; hostname+mac (GetMinerDetails) only until known.
LUXOS_READ: tuple[str, ...] = ("hashboards", "wattage", "wattage_limit", "fans", "uptime")
BRAIINS_READ: tuple[str, ...] = (
    "hashrate",
    "wattage",
    "wattage_limit",
    "is_mining",
    "uptime",
    "errors",
)
# A BOSer read asking for nothing outside these takes the lean RPC path.
BOSMINER_RPC_FIELDS: frozenset[str] = frozenset(BRAIINS_READ)
BOSMINER_LEAN_COMMANDS: tuple[str, ...] = ("summary", "devs", "tunerstatus")
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
        return ("hashrate", "wattage", "is_mining")  # lean: one RPC multicommand
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
    except (TypeError, ValueError, OverflowError):  # OverflowError: a huge JSON int
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


@dataclass(frozen=True, slots=True)
class MinerDetails:
    """What a detail read adds to the power fields: monitoring and identity."""

    temperature_c: float | None = None
    fan_rpm: tuple[int, ...] = ()
    hostname: str | None = None
    mac: str | None = None


def details_from_data(data: Any) -> MinerDetails:
    """Temperatures, fans and identity from a pyasic MinerData. Never raises."""
    return MinerDetails(
        temperature_c=_field(lambda: _finite(getattr(data, "temperature_avg", None))),
        fan_rpm=_field(lambda: _fan_rpms(getattr(data, "fans", None))) or (),
        hostname=_text(getattr(data, "hostname", None)),
        mac=_text(getattr(data, "mac", None)),
    )


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
    details = details_from_data(data)
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
        temperature_c=details.temperature_c,
        fan_rpm=details.fan_rpm,
        uptime_seconds=_finite(getattr(data, "uptime", None)),
        hostname=details.hostname or hostname,
        mac=details.mac or mac,
        errors=_errors(getattr(data, "errors", None)),
    )
    if not has_any_reading(state):
        return unreachable(
            miner_id, read_at_seconds, "no data in reply (port closed, refused or undecodable)"
        )
    return state


# tunerstatus chain states pyasic's BOSer._get_errors does not count as errors
_BOSMINER_OK_CHAIN_STATES = frozenset(
    {"Stable", "Testing performance profile", "Tuning individual chips"}
)


def _rpc_first(reply: Any, command: str, key: str) -> Any:
    """reply[command][0][key] of a pyasic multicommand reply; None if any level is off."""
    if not isinstance(reply, dict):
        return None
    wrapped = reply.get(command)
    if not isinstance(wrapped, list) or not wrapped or not isinstance(wrapped[0], dict):
        return None
    return wrapped[0].get(key)


def _rpc_row0(reply: Any, command: str, key: str) -> dict[str, Any]:
    """reply[command][0][key][0] (e.g. SUMMARY[0]); {} if absent or not an object."""
    rows = _rpc_first(reply, command, key)
    if isinstance(rows, list) and rows and isinstance(rows[0], dict):
        return rows[0]
    return {}


def _non_negative(value: Any) -> float | None:
    number = _finite(value)
    return number if number is not None and number >= 0 else None


def _bosminer_is_mining(devs: Any) -> bool | None:
    # pyasic: any(DEVS[i]["MHS 5s"] > 0) — so an empty list is False, as there.
    # An unparseable entry cannot prove "not mining": None unless another one hashes.
    if not isinstance(devs, list):
        return None
    unknown = False
    for dev in devs:
        mhs = _finite(dev.get("MHS 5s")) if isinstance(dev, dict) else None
        if mhs is None:
            unknown = True
        elif mhs > 0:
            return True
    return None if unknown else False


def _chain_index(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _bosminer_errors(chains: Any) -> tuple[str, ...]:
    # pyasic BOSer._get_errors: "Slot <n> <status, lower-cased first letter, cut at ' {'>",
    # n = HashchainIndex minus 6 when the first chain is 6..8; malformed chains skipped.
    if not isinstance(chains, list) or not chains or not isinstance(chains[0], dict):
        return ()
    first = _chain_index(chains[0].get("HashchainIndex"))
    offset = 6 if first in (6, 7, 8) else 0
    out: list[str] = []
    for chain in chains:
        if not isinstance(chain, dict):
            continue
        index, status = _chain_index(chain.get("HashchainIndex")), chain.get("Status")
        if index is None or not isinstance(status, str) or status in _BOSMINER_OK_CHAIN_STATES:
            continue
        text = status.split(" {")[0]
        if text:
            out.append(f"Slot {index - offset} {text[0].lower()}{text[1:]}")
    return tuple(out)


def _field(parse: Callable[..., Any], *args: Any) -> Any:
    """One field's parser; any surprise in a garbled reply makes that field None."""
    try:
        return parse(*args)
    except Exception:
        return None


def state_from_bosminer_rpc(
    miner_id: str,
    reply: Any,
    *,
    read_at_seconds: float,
    thresholds: MiningThresholds,
    hostname: str | None = None,
    mac: str | None = None,
) -> MinerState:
    """Map a BOSer RPC multicommand summary+devs+tunerstatus reply (pyasic's
    ``rpc.multicommand`` shape: ``{"summary": [<reply>], "devs": [...], ...}``).

    Same rules as state_from_data for a BRAIINS_READ: pyasic's BOSer parsing for
    hashrate/is_mining/uptime/errors, draw and limit from tunerstatus, and no
    power-relevant field at all means reachable=False. Never raises.
    """
    summary = _field(_rpc_row0, reply, "summary", "SUMMARY") or {}
    tuner = _field(_rpc_row0, reply, "tunerstatus", "TUNERSTATUS") or {}
    mhs = _field(_non_negative, summary.get("MHS 1m"))
    hashrate_ths = mhs / 1_000_000.0 if mhs is not None else None  # MH/s -> TH/s
    watts = _field(_non_negative, tuner.get("ApproximateMinerPowerConsumption"))
    limit = _field(_non_negative, tuner.get("PowerLimit"))
    uptime = _field(_non_negative, summary.get("Elapsed"))
    reported = _field(_bosminer_is_mining, _field(_rpc_first, reply, "devs", "DEVS"))
    state = MinerState(
        miner_id=miner_id,
        reachable=True,
        read_at_seconds=read_at_seconds,
        is_mining=derive_is_mining(
            reported=reported,
            firmware_reports=True,
            hashrate_ths=hashrate_ths,
            watts=watts,
            thresholds=thresholds,
        ),
        watts=watts,
        # 0 W is "no limit reported": over gRPC pyasic never shows a 0 limit either
        power_limit_watts=limit if limit else None,
        hashrate_ths=hashrate_ths,
        uptime_seconds=float(int(uptime)) if uptime is not None else None,  # pyasic: int()
        hostname=hostname,
        mac=mac,
        errors=_field(_bosminer_errors, tuner.get("TunerChainStatus")) or (),
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
