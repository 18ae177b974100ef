"""MinerDriver over pyasic 0.79.0 (LuxOS and Braiins OS / BOSer), used unmodified.

Rules (see docs/drivers.md):

* The pyasic class is built straight from the inventory (model + firmware) —
  no detection round-trips; ``pyasic.get_miner(ip)`` only for a model pyasic's
  class table does not know.
* Every pyasic call runs under its own ``asyncio.timeout`` (pyasic's RPC has
  none worth having, gRPC has none at all) and ANY exception becomes a typed
  value: a driver never raises for one bad miner.
* Each command is verified by reading the miner back.
* Passwords live in :class:`drivers.credentials.Secret` and are redacted from
  every text the driver produces.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from controller.clock import Clock, SystemClock
from controller.config import FleetConfig, HashgovConfig, MinerConfig, ModelConfig
from drivers.base import (
    CommandKind,
    CommandOutcome,
    CommandResult,
    MinerDriver,
    MinerState,
    Readback,
)
from drivers.credentials import CredentialStore, MinerCredentials, load_credentials, redact
from drivers.mapping import (
    BOSMINER_LEAN_COMMANDS,
    BOSMINER_RPC_FIELDS,
    BRAIINS_DETAIL,
    BRAIINS_IDENTITY,
    BRAIINS_READ,
    LUXOS_READ,
    OTHER_READ,
    POWER_LIMIT_READBACK,
    FirmwareKind,
    MinerDetails,
    MiningThresholds,
    details_from_data,
    mining_readback,
    state_from_bosminer_rpc,
    state_from_data,
    unreachable,
)
from drivers.rpc_commands import cache_command_list

log = structlog.get_logger("hashgov.drivers")

MAX_DETAIL_CHARS = 300

# Logins ahead of need (PyasicDriver._log_in_ahead). BOSer: pyasic logs in again
# inside the next privileged command once its token is 59 minutes old, so the
# driver renews it, alongside a read, when it is this old. LuxOS sessions last
# until the firmware drops them (then the next read logs on again). After a
# failed login the next attempt ahead waits this long.
TOKEN_REFRESH_SECONDS = 45 * 60.0
LOGIN_RETRY_SECONDS = 60.0

# A command's call on the pyasic miner, and its readback: (seen, detail, applied W).
_Send = Callable[[Any], Awaitable[Any]]
_Verify = Callable[[], Awaitable[tuple[bool, str, int | None]]]


@dataclass(frozen=True, slots=True)
class DriverSettings:
    """Timeouts and retry policy of one driver (from [fleet] in the config)."""

    read_timeout_seconds: float = 8.0
    command_timeout_seconds: float = 10.0  # per attempt of the command call itself
    command_retries: int = 2  # extra attempts after a TIMEOUT/ERROR (not after REJECTED)
    retry_backoff_seconds: float = 0.5  # doubled after each failed attempt
    verify_window_seconds: float = 5.0  # how long readback may wait for the change to show
    verify_interval_seconds: float = 0.5  # between readbacks
    detect_timeout_seconds: float = 10.0  # pyasic.get_miner fallback only
    # BOSer: every Nth read also fetches boards (temperatures) and fans; between
    # those, the last temperature/fans are carried forward (1 = always)
    detail_every_reads: int = 6
    # BOSer: one gRPC connection kept per miner (drivers/boser_channel.py) instead
    # of pyasic's connection per call
    keep_grpc_connections: bool = True

    @classmethod
    def from_fleet(cls, fleet: FleetConfig) -> DriverSettings:
        return cls(
            read_timeout_seconds=fleet.read_timeout_seconds,
            command_timeout_seconds=fleet.command_timeout_seconds,
            command_retries=fleet.command_retries,
            verify_window_seconds=min(5.0, fleet.command_timeout_seconds),
            detail_every_reads=max(
                1, round(fleet.detail_interval_seconds / fleet.poll_interval_seconds)
            ),
            keep_grpc_connections=fleet.keep_grpc_connections,
        )


@functools.cache
def import_pyasic() -> None:
    """Import pyasic without letting it change our log level.

    pyasic's import runs ``pyasic.logger.init_logger()``, which sets the root logger
    to WARNING: the daemon's configured ``logging.level`` (info, debug) would be
    silently lost the first time a driver is built. Keep the level we had."""
    root = logging.getLogger()
    level = root.level
    try:
        import pyasic
        import pyasic.logger  # noqa: F401
    finally:
        root.setLevel(level)


def pyasic_class_for(model: str, firmware: str) -> type[Any] | None:
    """pyasic's class for a model on LuxOS/Braiins, from its own table; None if unknown."""
    import_pyasic()
    from pyasic.miners.factory import MINER_CLASSES, MinerTypes

    miner_type = {"luxos": MinerTypes.LUX_OS, "braiins": MinerTypes.BRAIINS_OS}.get(
        firmware.lower()
    )
    if miner_type is None:
        return None
    table = MINER_CLASSES[miner_type]
    key = model.strip().upper()
    for candidate in (key, f"ANTMINER {key}"):
        cls = table.get(candidate)
        if cls is not None:
            return cls  # type: ignore[no-any-return]
    return None


def firmware_of(pyasic_miner: Any) -> FirmwareKind:
    import_pyasic()
    from pyasic.miners.backends.braiins_os import BOSer
    from pyasic.miners.backends.luxminer import LUXMiner

    if isinstance(pyasic_miner, LUXMiner):
        return FirmwareKind.LUXOS
    if isinstance(pyasic_miner, BOSer):
        return FirmwareKind.BRAIINS
    return FirmwareKind.OTHER


def read_options(firmware: FirmwareKind) -> tuple[str, ...]:
    """The pyasic DataOptions a regular read asks for (identity fields excluded)."""
    return {
        FirmwareKind.LUXOS: LUXOS_READ,
        FirmwareKind.BRAIINS: BRAIINS_READ,
        FirmwareKind.OTHER: OTHER_READ,
    }[firmware]


def quantised_watts(watts: int, profiles_watts: tuple[int, ...] | None) -> int | None:
    """LuxOS picks the highest profile at or below the request; None: no such profile."""
    if profiles_watts is None:
        return watts
    fitting = [p for p in profiles_watts if p <= watts]
    return max(fitting) if fitting else None


async def _lean_fetch(rpc: Any) -> Any:
    """summary+devs+tunerstatus through pyasic's own RPC client, in one connection.

    The joined command goes straight to send_command: pyasic's multicommand first
    introspects the client class for every call (a sixth of the controller's CPU at
    1,000 miners). On an error reply multicommand is the fallback, which retries and
    then sends one command per connection; a refused port gives an empty reply."""
    from pyasic.errors import APIError  # pyasic is loaded: this miner came from it

    send = getattr(rpc, "send_command", None)
    if callable(send):
        try:
            data = await send("+".join(BOSMINER_LEAN_COMMANDS), allow_warning=False)
        except APIError:
            pass
        else:
            if isinstance(data, dict):
                data["multicommand"] = True
            return data
    return await rpc.multicommand(*BOSMINER_LEAN_COMMANDS)


class _Failure(Exception):
    """Internal: one attempt failed in a way that may be retried."""

    def __init__(self, outcome: CommandOutcome, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail


class PyasicDriver:
    """One miner behind pyasic. Never raises from its MinerDriver methods."""

    def __init__(
        self,
        miner: MinerConfig,
        *,
        model: ModelConfig | None = None,
        settings: DriverSettings | None = None,
        credentials: MinerCredentials | None = None,
        clock: Clock | None = None,
        pyasic_miner: Any = None,
    ) -> None:
        self._config = miner
        self._miner_id = miner.miner_id
        self._settings = settings or DriverSettings()
        self._credentials = credentials or MinerCredentials()
        self._secrets = (
            (self._credentials.password.reveal(),) if self._credentials.password else ()
        )
        self._clock: Clock = clock or SystemClock()
        self._profiles_watts = (
            tuple(sorted(model.profiles_watts)) if model and model.profiles_watts else None
        )
        self._thresholds = (
            MiningThresholds.for_model(model.sleep_watts, model.nameplate_ths)
            if model is not None
            else MiningThresholds()
        )
        self._hostname: str | None = None
        self._mac: str | None = None
        self._temperature_c: float | None = None
        self._fan_rpm: tuple[int, ...] = ()
        # Braiins detail reads (gRPC: boards, fans, and hostname+mac until known) come
        # every detail_every_reads reads; each miner starts the cycle at its own offset
        # (crc32 of its id), so neither the first poll of a large fleet nor any later
        # one pays for every miner's gRPC at once: the first read is lean for most.
        every = max(1, self._settings.detail_every_reads)
        self._reads_since_detail = zlib.crc32(self._miner_id.encode()) % every
        self._login_due_seconds = -math.inf  # monotonic time of the next login ahead
        self._detect_lock = asyncio.Lock()
        # BOSer: one login at a time; a login that waited takes a token got meanwhile
        self._login_lock = asyncio.Lock()
        self._luxos_presets: dict[int, str] | None = None  # profile watts -> name
        self._miner: Any = None
        self._kept_web: Any = None  # BOSer: the KeptChannelWebAPI swapped in at adoption
        self._firmware = FirmwareKind(miner.firmware)
        if pyasic_miner is not None:
            self._adopt(pyasic_miner, firmware_of(pyasic_miner) if _is_pyasic(pyasic_miner)
                        else self._firmware)
        else:
            cls = pyasic_class_for(miner.model, miner.firmware)
            if cls is not None:
                self._adopt(cls(miner.address), self._firmware)

    # ------------------------------------------------------------ properties

    @property
    def miner_id(self) -> str:
        return self._miner_id

    @property
    def address(self) -> str:
        return self._config.address

    @property
    def firmware(self) -> FirmwareKind:
        return self._firmware

    @property
    def settings(self) -> DriverSettings:
        return self._settings

    @property
    def read_include(self) -> tuple[str, ...]:
        """DataOptions the next regular read covers. A BOSer one within
        BOSMINER_RPC_FIELDS is served by the lean RPC read, not by get_data."""
        include = read_options(self._firmware)
        if self._firmware is FirmwareKind.BRAIINS:
            every = max(1, self._settings.detail_every_reads)
            if self._reads_since_detail + 1 >= every:
                include = include + BRAIINS_DETAIL
                if self._hostname is None or self._mac is None:
                    include = include + BRAIINS_IDENTITY
        return include

    def __repr__(self) -> str:
        return (
            f"PyasicDriver(miner_id={self._miner_id!r}, address={self._config.address!r}, "
            f"firmware={self._firmware.value!r})"
        )

    async def pyasic_miner(self) -> Any:
        """The pyasic object (detected on first use if the model was unknown); None if not found."""
        try:
            return await self._ensure_miner()
        except _Failure:
            return None

    # ------------------------------------------------------------ plumbing

    def _adopt(self, pyasic_miner: Any, firmware: FirmwareKind) -> None:
        self._miner = pyasic_miner
        self._firmware = firmware
        self._kept_web = self._keep_grpc_connection(pyasic_miner, firmware)
        rpc = getattr(pyasic_miner, "rpc", None)
        if rpc is not None:
            cache_command_list(rpc)  # pyasic's multicommand lists them before every call
        self._apply_credentials(pyasic_miner)

    def _keep_grpc_connection(self, pyasic_miner: Any, firmware: FirmwareKind) -> Any:
        """Give a BOSer miner the kept-connection gRPC client; it, or None."""
        if not self._settings.keep_grpc_connections or firmware is not FirmwareKind.BRAIINS:
            return None
        from pyasic.web.braiins_os.boser import BOSerWebAPI  # loaded: the miner came from it

        from drivers.boser_channel import KeptChannelWebAPI

        web = getattr(pyasic_miner, "web", None)
        if isinstance(web, BOSerWebAPI) and not isinstance(web, KeptChannelWebAPI):
            web = pyasic_miner.web = KeptChannelWebAPI.replacing(web)
        return web if isinstance(web, KeptChannelWebAPI) else None

    def _login_due(self) -> bool:
        return self._firmware in _LOGS_IN and self._clock.monotonic() >= self._login_due_seconds

    async def _log_in_ahead(self) -> None:
        """Log in alongside a read, so no stop or cut has to first: on the first
        read, when a BOSer token is TOKEN_REFRESH_SECONDS old (pyasic would log in
        inside the command once it is 59 minutes old) and after a LuxOS session
        was dropped. LuxOS also learns its profile names here, which its first cut
        would otherwise ask for. The first read's BOSer login opens the kept
        connection, before the service freezes its start-up heap. A failure is
        only logged: the next command logs in itself and reports it."""
        now = self._clock.monotonic()
        self._login_due_seconds = now + LOGIN_RETRY_SECONDS
        try:
            async with asyncio.timeout(self._settings.read_timeout_seconds):
                miner = await self._ensure_miner()
                lasts_seconds = await self._log_in(miner)
        except Exception as exc:
            log.debug("driver.login_ahead_failed", miner_id=self._miner_id, detail=self._describe(exc))
            return
        if lasts_seconds is not None:
            self._login_due_seconds = now + lasts_seconds

    async def _log_in(self, miner: Any) -> float | None:
        """One login through pyasic's own calls: how long it lasts, None if refused."""
        if self._firmware is FirmwareKind.BRAIINS:
            web = miner.web  # the kept client's login goes over its connection
            held = web.token
            async with self._login_lock:
                if web.token is held:  # else a detail read's get_data just logged in
                    await web._get_auth()
            return TOKEN_REFRESH_SECONDS if web.token is not None else None
        rpc = miner.rpc  # LuxOS: pyasic's session / logon, kept in the client
        if rpc.session_token is None:
            await rpc.auth()
        if self._luxos_presets is None:
            await self._luxos_profile_names(miner)
        return math.inf if rpc.session_token is not None else None

    async def close(self) -> None:
        """Close the gRPC connection kept for this miner, if any."""
        if self._kept_web is not None:
            self._kept_web.close()

    def _apply_credentials(self, pyasic_miner: Any) -> None:
        # BOSer's gRPC client logs in with web.username / web.pwd (pyasic reads a
        # settings key that does not exist and falls back to "root"); setting the
        # attributes on the object is the only per-miner knob.
        web = getattr(pyasic_miner, "web", None)
        if web is None or self._firmware is not FirmwareKind.BRAIINS:
            return
        if hasattr(web, "username"):
            web.username = self._credentials.username
        if self._credentials.password is not None and hasattr(web, "pwd"):
            web.pwd = self._credentials.password.reveal()

    def _describe(self, exc: BaseException) -> str:
        parts: list[str] = []
        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen and len(parts) < 3:
            seen.add(id(current))
            text = str(current).strip()
            parts.append(f"{type(current).__name__}: {text}" if text else type(current).__name__)
            current = current.__cause__ or current.__context__
        return self._clean(" <- ".join(parts))

    def _clean(self, text: str) -> str:
        text = redact(text, self._secrets)
        if len(text) > MAX_DETAIL_CHARS:
            text = text[: MAX_DETAIL_CHARS - 3] + "..."
        return text

    async def _ensure_miner(self) -> Any:
        if self._miner is not None:
            return self._miner
        async with self._detect_lock:
            if self._miner is not None:
                return self._miner
            import_pyasic()
            import pyasic

            try:
                async with asyncio.timeout(self._settings.detect_timeout_seconds):
                    found = await pyasic.get_miner(self._config.address)
            except TimeoutError:
                raise _Failure(CommandOutcome.TIMEOUT, "detection timed out") from None
            except Exception as exc:
                raise _Failure(CommandOutcome.ERROR, f"detection failed: {self._describe(exc)}") from None
            if found is None:
                raise _Failure(CommandOutcome.ERROR, "detection found no supported miner")
            self._adopt(found, firmware_of(found))
            return found

    async def _call(self, timeout_seconds: float, what: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Run one pyasic call under our own deadline; every failure becomes _Failure."""
        try:
            async with asyncio.timeout(timeout_seconds) as deadline:
                return await fn()
        except TimeoutError as exc:
            if deadline.expired():
                raise _Failure(
                    CommandOutcome.TIMEOUT, f"{what}: no reply within {timeout_seconds:g} s"
                ) from None
            raise _Failure(CommandOutcome.ERROR, f"{what}: {self._describe(exc)}") from None
        except Exception as exc:
            raise _Failure(classify_exception(exc), f"{what}: {self._describe(exc)}") from None

    def _forget_session(self) -> bool:
        """LuxOS: pyasic caches the session id forever; after a reboot or logoff the
        miner refuses it, so drop it before the next attempt (pyasic logs on again).
        Whether there was one to drop."""
        self._luxos_presets = None  # after a firmware update the names may differ
        rpc = getattr(self._miner, "rpc", None)
        if rpc is None or getattr(rpc, "session_token", None) is None:
            return False
        rpc.session_token = None
        self._login_due_seconds = -math.inf  # the next read logs on ahead again
        return True

    async def _login_once(self, miner: Any) -> None:
        # BOSer: pyasic's get_data fires one gRPC Login per call when no token is
        # cached (no lock); log in once first so they all reuse the token, and not
        # beside a login ahead already under way (the first read runs both).
        web = getattr(miner, "web", None)
        if (
            self._firmware is not FirmwareKind.BRAIINS
            or web is None
            or getattr(web, "token", "") is not None
            or not hasattr(web, "auth")
        ):
            return
        async with self._login_lock:
            if web.token is None:
                await web.auth()

    # ------------------------------------------------------------ reads

    def _lean(self, miner: Any, include: tuple[str, ...]) -> bool:
        """BOSer read that one RPC multicommand answers (no get_data, no gRPC)?"""
        return (
            self._firmware is FirmwareKind.BRAIINS
            and BOSMINER_RPC_FIELDS.issuperset(include)
            and callable(getattr(getattr(miner, "rpc", None), "multicommand", None))
        )

    async def _get_data(self, miner: Any, include: tuple[str, ...]) -> Any:
        await self._login_once(miner)
        return await miner.get_data(include=list(include))

    async def _read(self, include: tuple[str, ...], timeout_seconds: float) -> MinerState:
        try:
            miner = await self._ensure_miner()
            lean = self._lean(miner, include)
            fetch: Callable[[], Awaitable[Any]]
            if lean:
                fetch = functools.partial(_lean_fetch, miner.rpc)
            else:
                fetch = functools.partial(self._get_data, miner, include)
            data = await self._call(timeout_seconds, "read", fetch)
        except _Failure as failure:
            return unreachable(self._miner_id, self._clock.monotonic(), failure.detail)
        if lean:
            state = state_from_bosminer_rpc(
                self._miner_id,
                data,
                read_at_seconds=self._clock.monotonic(),
                thresholds=self._thresholds,
                hostname=self._hostname,
                mac=self._mac,
            )
        else:
            state = state_from_data(
                self._miner_id,
                data,
                read_at_seconds=self._clock.monotonic(),
                firmware=self._firmware,
                thresholds=self._thresholds,
                asked=include,
                hostname=self._hostname,
                mac=self._mac,
            )
        if state.reachable:
            self._hostname = state.hostname
            self._mac = state.mac
        return state

    async def read_state(self) -> MinerState:
        try:
            include = self.read_include
            read = (self._read_braiins(include) if self._firmware is FirmwareKind.BRAIINS
                    else self._read(include, self._settings.read_timeout_seconds))
            if self._login_due():
                state, _ = await asyncio.gather(read, self._log_in_ahead())
                return state
            return await read
        except Exception as exc:  # belt and braces: mapping bugs must not escape either
            return unreachable(self._miner_id, self._clock.monotonic(), self._describe(exc))

    async def _read_braiins(self, include: tuple[str, ...]) -> MinerState:
        """The power fields from the lean RPC read, and on a detail read, alongside it,
        only the gRPC calls the details need (boards and fans, identity until known):
        two HTTP/2 connections, not the four or five get_data opens for every field.
        Between detail reads, and when one fails, the last details are carried forward."""
        timeout = self._settings.read_timeout_seconds
        regular = tuple(f for f in include if f in BOSMINER_RPC_FIELDS)
        detail = tuple(f for f in include if f not in BOSMINER_RPC_FIELDS)
        miner = self._miner
        if detail and miner is not None and self._lean(miner, regular):
            state, details = await asyncio.gather(
                self._read(regular, timeout), self._read_details(miner, detail, timeout)
            )
        else:  # a regular read is lean by itself; else one get_data for every field
            state = await self._read(include, timeout)
            details = (  # only a detail read's are kept (a regular read asks for none)
                MinerDetails(state.temperature_c, state.fan_rpm, state.hostname, state.mac)
                if detail
                else None
            )
        if not state.reachable:
            return state
        if detail:
            self._keep_details(details)
        else:
            self._reads_since_detail += 1
        return dataclasses.replace(
            state, temperature_c=self._temperature_c, fan_rpm=self._fan_rpm,
            hostname=self._hostname, mac=self._mac,
        )

    async def _read_details(
        self, miner: Any, fields: tuple[str, ...], timeout_seconds: float
    ) -> MinerDetails | None:
        try:
            data = await self._call(timeout_seconds, "detail read",
                                    functools.partial(self._get_data, miner, fields))
        except _Failure as failure:
            log.debug("driver.detail_read_failed", miner_id=self._miner_id, detail=failure.detail)
            return None
        return details_from_data(data)

    def _keep_details(self, details: MinerDetails | None) -> None:
        """A detail read happened (failed: None): start the next cycle either way, so a
        miner whose gRPC keeps failing is not asked on every read."""
        self._reads_since_detail = 0
        if details is None:
            return
        self._temperature_c, self._fan_rpm = details.temperature_c, details.fan_rpm
        self._hostname = details.hostname or self._hostname
        self._mac = details.mac or self._mac

    # ------------------------------------------------------------ commands

    async def set_power_limit(self, watts: int) -> CommandResult:
        expected = quantised_watts(watts, self._profiles_watts)

        async def verify() -> tuple[bool, str, int | None]:
            state = await self._read(POWER_LIMIT_READBACK, self._settings.read_timeout_seconds)
            if not state.reachable:
                return False, f"readback failed: {state.error}", None
            got = state.power_limit_watts
            applied = round(got) if got is not None else None
            if applied is None:
                return False, "readback has no power limit", None
            if expected is not None:
                ok = applied == expected
                want = f"{expected} W"
            else:
                ok = applied <= watts
                want = f"<= {watts} W"
            return ok, f"applied {applied} W (requested {watts} W, expected {want})", applied

        if expected is None:
            return self._result(
                CommandKind.SET_POWER_LIMIT,
                CommandOutcome.REJECTED,
                0.0,
                watts,
                f"no profile at or below {watts} W (profiles {list(self._profiles_watts or ())})",
            )
        return await _completed(await self._send_command(
            CommandKind.SET_POWER_LIMIT, lambda m: self._set_limit(m, watts), verify, watts
        ))

    async def _set_limit(self, miner: Any, watts: int) -> Any:
        rpc = getattr(miner, "rpc", None)
        if self._firmware is FirmwareKind.LUXOS and callable(getattr(rpc, "profileset", None)):
            return await self._luxos_set_limit(miner, rpc, watts)
        return await miner.set_power_limit(watts)

    async def _luxos_set_limit(self, miner: Any, rpc: Any, watts: int) -> Any:
        """pyasic's LuxOS set_power_limit, step by step, without its full config read.

        pyasic reads the whole config (six commands and their parse) on every call
        only to learn the profile names, which do not change: we ask once and keep
        them. The rest is pyasic's own sequence through its own client: ATM off if
        it is on (LuxOS refuses a profile while ATM runs), profileset, ATM back on.
        At 10,000 miners a LuxOS cut was the slowest command (p50 1.3 s in `scale`)."""
        from pyasic.errors import APIError  # pyasic is loaded: this miner came from it

        presets = self._luxos_presets or await self._luxos_profile_names(miner)
        if not presets:
            return await miner.set_power_limit(watts)  # pyasic says why, and refuses
        profile_watts = quantised_watts(watts, tuple(presets))
        if profile_watts is None:
            return False  # as pyasic: no profile at or below the request
        name = presets[profile_watts]
        atm_on = await miner.atm_enabled()
        if atm_on:
            await rpc.atmset(enabled=False)
        try:
            reply = await rpc.profileset(name)
        except APIError:
            if atm_on:  # it answered: put ATM back before saying no (not on a timeout)
                await rpc.atmset(enabled=True)
            raise
        if atm_on:
            await rpc.atmset(enabled=True)
        try:
            return reply["PROFILE"][0]["Profile"] == name
        except (LookupError, TypeError):
            return False

    async def _luxos_profile_names(self, miner: Any) -> dict[int, str] | None:
        """Profile watts -> name, from pyasic's config read; kept (None: none found)."""
        config = await miner.get_config()
        available = getattr(getattr(config, "mining_mode", None), "available_presets", None)
        if not available:
            return None
        self._luxos_presets = {int(p.power): str(p.name) for p in available
                               if p.power is not None and p.name is not None}
        return self._luxos_presets

    async def stop(self) -> CommandResult:
        return await _completed(await self.send_stop())

    async def send_stop(self) -> CommandResult | Readback:
        return await self._send_command(
            CommandKind.STOP, lambda m: m.stop_mining(), self._stopped, None
        )

    async def _stopped(self) -> tuple[bool, str, int | None]:
        state = await self._read(mining_readback(self._firmware), self._settings.read_timeout_seconds)
        if not state.reachable:
            return False, f"readback failed: {state.error}", None
        return state.is_mining is False, f"hashrate {_fmt(state.hashrate_ths)} TH/s, draw {_fmt(state.watts)} W", None

    async def resume(self) -> CommandResult:
        async def verify() -> tuple[bool, str, int | None]:
            state = await self._read(
                mining_readback(self._firmware), self._settings.read_timeout_seconds
            )
            if not state.reachable:
                return False, f"readback failed: {state.error}", None
            awake = state.is_mining is True or (
                state.watts is not None and state.watts > self._thresholds.idle_watts
            )
            return awake, f"hashrate {_fmt(state.hashrate_ths)} TH/s, draw {_fmt(state.watts)} W", None

        return await _completed(await self._send_command(
            CommandKind.RESUME, lambda m: m.resume_mining(), verify, None
        ))

    async def _send_command(
        self, kind: CommandKind, send: _Send, verify: _Verify, watts: int | None
    ) -> CommandResult | Readback:
        """Send with retries: the failure, or the readback that verifies the command."""
        started = self._clock.monotonic()
        try:
            failure = await self._command_attempts(kind, send, watts, started)
        except Exception as exc:  # never raise to the controller
            failure = self._result(
                kind, CommandOutcome.ERROR, self._clock.monotonic() - started, watts,
                self._describe(exc),
            )
        if failure is not None:
            return self._logged(failure)
        return functools.partial(self._read_back, kind, verify, watts, started)

    async def _read_back(
        self, kind: CommandKind, verify: _Verify, watts: int | None, started: float
    ) -> CommandResult:
        try:
            ok, detail, applied = await self._verify(verify)
        except Exception as exc:  # never raise to the controller
            ok, detail, applied = False, self._describe(exc), None
        return self._logged(self._result(
            kind,
            CommandOutcome.OK if ok else CommandOutcome.UNVERIFIED,
            self._clock.monotonic() - started,
            watts,
            detail if ok else f"accepted, not seen in readback: {detail}",
            applied,
        ))

    def _logged(self, result: CommandResult) -> CommandResult:
        log_method = log.debug if result.ok else log.warning
        log_method(
            "driver.command",
            miner_id=self._miner_id,
            kind=result.kind.value,
            outcome=result.outcome.value,
            latency_seconds=round(result.latency_seconds, 3),
            requested_watts=result.requested_watts,
            applied_watts=result.applied_watts,
            detail=result.detail,
        )
        return result

    async def _command_attempts(
        self,
        kind: CommandKind,
        send: _Send,
        watts: int | None,
        started: float,
    ) -> CommandResult | None:
        """Send until accepted (None) or out of attempts (the last failure)."""
        s = self._settings
        attempts = s.command_retries + 1
        last: _Failure = _Failure(CommandOutcome.ERROR, "not attempted")
        for attempt in range(attempts):
            if attempt:
                await self._clock.sleep(s.retry_backoff_seconds * 2 ** (attempt - 1))
            try:
                miner = await self._ensure_miner()
                call = functools.partial(
                    self._call, s.command_timeout_seconds, kind.value, functools.partial(send, miner)
                )
                accepted = await call()
                if accepted is not True and self._forget_session():
                    # pyasic's LuxOS stop/resume say False for any APIError, a session the
                    # firmware dropped (a reboot, a logoff elsewhere) included, and would
                    # keep sending the dead one: log on again once before calling it refused
                    accepted = await call()
            except _Failure as failure:
                if failure.outcome is CommandOutcome.REJECTED and not _session_problem(failure.detail):
                    return self._result(
                        kind, failure.outcome, self._clock.monotonic() - started, watts,
                        failure.detail,
                    )
                self._forget_session()
                last = failure
                continue
            if accepted is not True:
                # pyasic answers False both for "the miner said no" and (LuxOS) for
                # "nobody answered": a quick read tells the two apart.
                probe = await self._read(POWER_LIMIT_READBACK, min(s.read_timeout_seconds, 3.0))
                if not probe.reachable:
                    last = _Failure(CommandOutcome.ERROR, f"{kind.value}: unreachable ({probe.error})")
                    continue
                limit = probe.power_limit_watts
                return self._result(
                    kind, CommandOutcome.REJECTED, self._clock.monotonic() - started, watts,
                    f"{kind.value}: firmware refused (pyasic returned {accepted!r}); "
                    f"power limit now {_fmt(limit)} W",
                    round(limit) if kind is CommandKind.SET_POWER_LIMIT and limit is not None else None,
                )
            return None
        suffix = f" (after {attempts} attempts)" if attempts > 1 else ""
        return self._result(
            kind, last.outcome, self._clock.monotonic() - started, watts, last.detail + suffix
        )

    async def _verify(self, verify: _Verify) -> tuple[bool, str, int | None]:
        s = self._settings
        deadline = time.monotonic() + s.verify_window_seconds
        while True:
            ok, detail, applied = await verify()
            if ok or time.monotonic() + s.verify_interval_seconds > deadline:
                return ok, detail, applied
            await self._clock.sleep(s.verify_interval_seconds)

    def _result(
        self,
        kind: CommandKind,
        outcome: CommandOutcome,
        latency_seconds: float,
        watts: int | None,
        detail: str,
        applied_watts: int | None = None,
    ) -> CommandResult:
        return CommandResult(
            miner_id=self._miner_id,
            kind=kind,
            outcome=outcome,
            latency_seconds=max(0.0, latency_seconds),
            requested_watts=watts,
            detail=self._clean(detail),
            applied_watts=applied_watts,
        )


async def _completed(sent: CommandResult | Readback) -> CommandResult:
    """A command sent: its failure as it is, else the readback's verdict."""
    return sent if isinstance(sent, CommandResult) else await sent()


def classify_exception(exc: BaseException) -> CommandOutcome:
    """REJECTED when the firmware answered with an error status; ERROR otherwise.

    pyasic raises APIError("<cmd>: <Msg>") for a well-formed reply whose STATUS
    is not S/I (the miner said no); an APIError caused by another exception
    (connection refused/reset, gRPC failure) or a decode error, and any other
    exception type (KeyError/TypeError from half-read replies), is an ERROR.
    """
    from pyasic.errors import APIError

    if isinstance(exc, APIError) and exc.__cause__ is None and "Decode Error" not in str(exc):
        return CommandOutcome.REJECTED
    return CommandOutcome.ERROR


_LOGS_IN = frozenset({FirmwareKind.BRAIINS, FirmwareKind.LUXOS})  # firmware _log_in knows


def _session_problem(detail: str) -> bool:
    return "session" in detail.lower()


def _fmt(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}"


def _is_pyasic(obj: Any) -> bool:
    return type(obj).__module__.startswith("pyasic.")


# ---------------------------------------------------------------- factory


def build_pyasic_drivers(
    config: HashgovConfig,
    *,
    clock: Clock | None = None,
    credentials: CredentialStore | None = None,
    settings: DriverSettings | None = None,
) -> dict[str, PyasicDriver]:
    """One driver per inventory miner (excluded ones too: they are still read).

    Raises drivers.credentials.CredentialsError if the credentials file is unusable.
    """
    fleet = config.fleet
    store = credentials if credentials is not None else load_credentials(fleet.credentials_file)
    settings = settings or DriverSettings.from_fleet(fleet)
    clock = clock or SystemClock()
    drivers: dict[str, PyasicDriver] = {}
    for miner in fleet.miners:
        drivers[miner.miner_id] = PyasicDriver(
            miner,
            model=fleet.model_for(miner),
            settings=settings,
            credentials=store.for_miner(miner.address, miner.name),
            clock=clock,
        )
    return drivers


def build_drivers(
    config: HashgovConfig,
    *,
    clock: Clock | None = None,
    credentials: CredentialStore | None = None,
) -> dict[str, MinerDriver]:
    """The controller's view: miner_id -> MinerDriver."""
    built: Mapping[str, MinerDriver] = build_pyasic_drivers(
        config, clock=clock, credentials=credentials
    )
    return dict(built)
