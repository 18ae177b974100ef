"""BOSer commands over one kept gRPC connection per miner (drivers/boser_channel.py),
against the simulated BOSer: one connection serves every command, a broken or
stuck one is replaced, the allowance caps how many stay open, close() ends them;
the driver logs in ahead of need, alongside reads, so no command has to.
Connections are counted in /proc/net/tcp. Addresses 127.2.60-69.x."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Callable
from itertools import count
from pathlib import Path

import pytest
from pyasic.errors import APIError
from pyasic.web.braiins_os.boser import BOSerWebAPI

from controller.catalog import find_model
from controller.clock import SystemClock
from controller.config import MinerConfig
from drivers import open_files
from drivers.base import CommandOutcome
from drivers.boser_channel import KeptChannelWebAPI
from drivers.open_files import ConnectionAllowance
from drivers.pyasic_driver import (
    LOGIN_RETRY_SECONDS,
    TOKEN_REFRESH_SECONDS,
    DriverSettings,
    PyasicDriver,
)
from simulators.miners import faults
from simulators.miners.boser import GRPC_PORT
from simulators.miners.fleet import SimFleet, make_specs
from tests.integration.test_driver_pyasic import (  # fast timeouts against the simulator
    SETTINGS,
    _record,
)

pytestmark = pytest.mark.integration
ESTABLISHED = "01"
_subnet = count()


def open_grpc_connections(address: str) -> int:
    """Client-side ESTABLISHED TCP connections to address:50051 (IPv4, this host)."""
    remote = f"{socket.inet_aton(address)[::-1].hex().upper()}:{GRPC_PORT:04X}"
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for row in rows if row.split()[2] == remote and row.split()[3] == ESTABLISHED)


async def eventually(check: Callable[[], bool], timeout_seconds: float = 2.0) -> bool:
    """Whether ``check`` came true within the timeout. What is checked here (the
    kernel's socket table, a listener closing) offers no event to await, and a
    close takes effect on a later turn of the event loop, on both ends."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_seconds
    while not check():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def settled_connections(address: str, expected: int) -> int:
    """The count once it is ``expected`` (or after 2 s)."""
    await eventually(lambda: open_grpc_connections(address) == expected)
    return open_grpc_connections(address)


class ShiftedClock(SystemClock):
    """The system clock, moved forward by hand: what the driver's token timing
    reads. Its sleeps stay real (command readbacks wait between attempts)."""

    def __init__(self) -> None:
        self.shift_seconds = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.shift_seconds


@contextlib.asynccontextmanager
async def braiins_miner(
    settings: DriverSettings = SETTINGS, clock: SystemClock | None = None
) -> AsyncIterator[tuple[SimFleet, PyasicDriver]]:
    spec = make_specs(1, "Antminer S19j Pro:braiins:1", f"127.2.{60 + next(_subnet) % 10}.1")[0]
    async with SimFleet([spec], time_scale=60.0) as sim:
        driver = PyasicDriver(
            MinerConfig(address=spec.address, model=spec.model, firmware=spec.firmware, name=spec.name),
            model=find_model(spec.model, spec.firmware),
            settings=settings,
            clock=clock,
        )
        try:
            yield sim, driver
        finally:
            await driver.close()


async def test_every_command_goes_over_one_kept_connection_until_close() -> None:
    before = open_files.KEPT_CONNECTIONS.open_count
    async with braiins_miner() as (sim, driver):
        for command in (driver.stop, driver.resume, lambda: driver.set_power_limit(2500)):
            assert (await command()).outcome is CommandOutcome.OK
            assert open_grpc_connections(driver.address) == 1
        assert open_files.KEPT_CONNECTIONS.open_count == before + 1
        assert sim.miners[driver.address].power_target_watts == 2500
        await driver.close()
        assert await settled_connections(driver.address, 0) == 0
        assert open_files.KEPT_CONNECTIONS.open_count == before
        # closed is not broken: the next command opens a new connection
        assert (await driver.stop()).outcome is CommandOutcome.OK
        assert open_grpc_connections(driver.address) == 1


async def test_without_keeping_no_connection_outlives_its_command() -> None:
    async with braiins_miner(dataclasses.replace(SETTINGS, keep_grpc_connections=False)) as (_, driver):
        assert (await driver.stop()).outcome is CommandOutcome.OK
        assert (await driver.set_power_limit(2500)).outcome is CommandOutcome.OK
        assert await settled_connections(driver.address, 0) == 0


async def test_a_connection_the_miner_dropped_is_replaced_by_the_next_command() -> None:
    async with braiins_miner() as (sim, driver):
        assert (await driver.stop()).outcome is CommandOutcome.OK
        sim.set_fault(driver.address, faults.UNREACHABLE)  # listeners and connections closed
        assert await settled_connections(driver.address, 0) == 0
        failed = await driver.resume()
        assert failed.outcome is CommandOutcome.ERROR
        assert not sim.miners[driver.address].is_mining
        sim.clear_fault(driver.address)
        assert (await driver.resume()).outcome is CommandOutcome.OK
        assert open_grpc_connections(driver.address) == 1


async def test_a_command_that_timed_out_leaves_no_stuck_connection_behind() -> None:
    async with braiins_miner() as (sim, driver):
        assert (await driver.stop()).outcome is CommandOutcome.OK
        sim.set_fault(driver.address, faults.BLACKHOLE)  # accepts, never answers
        assert (await driver.resume()).outcome is CommandOutcome.TIMEOUT
        assert await settled_connections(driver.address, 0) == 0  # each timed-out attempt closed its own
        sim.clear_fault(driver.address)
        assert (await driver.resume()).outcome is CommandOutcome.OK


async def test_a_token_the_miner_revoked_is_renewed_over_the_kept_connection() -> None:
    async with braiins_miner() as (sim, driver):
        assert (await driver.stop()).outcome is CommandOutcome.OK
        sim._servers[driver.address].on_reboot()  # BOSer forgets every token it issued
        assert (await driver.resume()).outcome is CommandOutcome.OK
        assert open_grpc_connections(driver.address) == 1


async def test_with_no_allowance_left_each_call_has_its_own_connection() -> None:
    async with braiins_miner() as (sim, driver):
        web = KeptChannelWebAPI.replacing(BOSerWebAPI(driver.address), ConnectionAllowance(limit=0))
        await web.pause_mining()
        assert not web.connected
        assert await settled_connections(driver.address, 0) == 0
        assert sim.miners[driver.address].is_sleeping
        await web.resume_mining()
        assert not sim.miners[driver.address].is_sleeping


async def test_an_unknown_command_is_an_api_error_not_a_crash() -> None:
    async with braiins_miner() as (_, driver):
        allowance = ConnectionAllowance(limit=1)
        web = KeptChannelWebAPI.replacing(BOSerWebAPI(driver.address), allowance)
        with pytest.raises(APIError, match="no_such_command"):
            await web.send_command("no_such_command", message=None)
        assert await web.send_command("no_such_command", ignore_errors=True, message=None) == {}
        web.close()
        assert allowance.open_count == 0


async def test_a_simulated_boser_that_stops_ends_the_connections_clients_hold() -> None:
    """The simulator side: an unreachable miner must not keep answering over a
    connection opened before, and the connections it closed are not held on to."""
    async with braiins_miner() as (sim, driver):
        assert (await driver.stop()).outcome is CommandOutcome.OK
        server = sim._servers[driver.address]._grpc
        assert server is not None and len(server._transports) == 1
        sim.set_fault(driver.address, faults.UNREACHABLE)
        assert await settled_connections(driver.address, 0) == 0
        assert len(server._transports) == 0


async def test_the_first_read_logs_in_over_the_kept_connection_so_no_command_has_to() -> None:
    """Opened by the first fleet read's login, the connections exist when the
    service freezes its long-lived heap; later reads and commands add none, and a
    stop goes out without a Login in front of it."""
    before = open_files.KEPT_CONNECTIONS.open_count
    async with braiins_miner() as (sim, driver):
        traffic = _record(await driver.pyasic_miner())
        assert (await driver.read_state()).reachable
        assert traffic.logins == 1 and traffic.grpc == []
        assert (await driver.pyasic_miner()).web.token is not None
        assert await settled_connections(driver.address, 1) == 1
        assert sim.miners[driver.address].commands_received == 0
        for _ in range(3):
            assert (await driver.read_state()).reachable
        assert (await driver.stop()).outcome is CommandOutcome.OK
        assert traffic.logins == 1 and traffic.grpc == ["pause_mining"]
        assert open_grpc_connections(driver.address) == 1
        assert open_files.KEPT_CONNECTIONS.open_count == before + 1


async def test_a_first_read_that_reads_details_logs_in_once() -> None:
    """A detail read goes through pyasic's get_data, whose gRPC calls log in by
    themselves when no token is held: the login ahead must not be a second one."""
    async with braiins_miner(dataclasses.replace(SETTINGS, detail_every_reads=1)) as (_, driver):
        traffic = _record(await driver.pyasic_miner())
        state = await driver.read_state()
        assert state.reachable and state.fan_rpm  # the details were read
        assert traffic.logins == 1
        assert (await driver.stop()).outcome is CommandOutcome.OK
        assert traffic.logins == 1


async def test_the_token_is_renewed_alongside_a_read_before_pyasic_would_let_it_expire() -> None:
    clock = ShiftedClock()
    async with braiins_miner(clock=clock) as (_, driver):
        web = (await driver.pyasic_miner()).web
        traffic = _record(await driver.pyasic_miner())
        assert (await driver.read_state()).reachable
        first_login = web._auth_time
        clock.shift_seconds += TOKEN_REFRESH_SECONDS - 5
        assert (await driver.read_state()).reachable
        assert traffic.logins == 1
        clock.shift_seconds += 10
        assert (await driver.read_state()).reachable
        assert traffic.logins == 2 and web._auth_time > first_login
        assert TOKEN_REFRESH_SECONDS < 3540  # pyasic's own limit: it would log in inside a command
        assert open_grpc_connections(driver.address) == 1  # the renewal used the kept connection


async def test_a_failed_login_ahead_leaves_the_read_alone_and_is_retried_a_minute_later() -> None:
    clock = ShiftedClock()
    async with braiins_miner(clock=clock) as (_, driver):
        web = (await driver.pyasic_miner()).web
        attempts: list[float] = []

        async def refused() -> None:
            attempts.append(clock.monotonic())
            raise APIError("login refused")

        web._get_auth = refused
        state = await driver.read_state()
        assert state.reachable and state.error is None
        assert (await driver.read_state()).reachable
        assert len(attempts) == 1  # not on every read
        clock.shift_seconds += LOGIN_RETRY_SECONDS
        assert (await driver.read_state()).reachable
        assert len(attempts) == 2 and web.token is None
        del web._get_auth  # the miner takes logins again
        clock.shift_seconds += LOGIN_RETRY_SECONDS
        assert (await driver.read_state()).reachable
        assert web.token is not None


async def test_failed_commands_do_not_make_the_next_read_log_in_again() -> None:
    """Only a LuxOS session the firmware dropped calls for a new login; a BOSer
    command that failed (here: timed out) leaves the token alone."""
    async with braiins_miner() as (sim, driver):
        traffic = _record(await driver.pyasic_miner())
        assert (await driver.read_state()).reachable
        sim.set_fault(driver.address, faults.BLACKHOLE)
        assert (await driver.stop()).outcome is CommandOutcome.TIMEOUT
        sim.clear_fault(driver.address)
        assert (await driver.read_state()).reachable
        assert (await driver.stop()).outcome is CommandOutcome.OK
        assert traffic.logins == 1


async def test_without_keeping_the_first_read_still_logs_in_on_its_own_connection() -> None:
    async with braiins_miner(dataclasses.replace(SETTINGS, keep_grpc_connections=False)) as (_, driver):
        traffic = _record(await driver.pyasic_miner())
        assert (await driver.read_state()).reachable
        assert traffic.logins == 1
        assert (await driver.stop()).outcome is CommandOutcome.OK
        assert traffic.logins == 1
        assert await settled_connections(driver.address, 0) == 0


async def test_a_login_that_times_out_leaves_no_connection_and_no_allowance_taken() -> None:
    before = open_files.KEPT_CONNECTIONS.open_count
    async with braiins_miner() as (sim, driver):
        sim.set_fault(driver.address, faults.BLACKHOLE)  # accepts, never answers
        assert not (await driver.read_state()).reachable
        assert (await driver.pyasic_miner()).web.token is None
        assert await settled_connections(driver.address, 0) == 0
        assert open_files.KEPT_CONNECTIONS.open_count == before
        sim.clear_fault(driver.address)
        assert (await driver.stop()).outcome is CommandOutcome.OK


async def test_a_first_read_of_an_unreachable_miner_opens_nothing_and_reports_it() -> None:
    before = open_files.KEPT_CONNECTIONS.open_count
    async with braiins_miner() as (sim, driver):
        sim.set_fault(driver.address, faults.UNREACHABLE)
        assert await eventually(lambda: sim._servers[driver.address]._grpc is None)
        state = await driver.read_state()
        assert not state.reachable and state.error
        assert open_files.KEPT_CONNECTIONS.open_count == before
        sim.clear_fault(driver.address)
        assert (await driver.stop()).outcome is CommandOutcome.OK
