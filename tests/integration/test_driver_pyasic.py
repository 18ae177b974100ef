"""PyasicDriver against the miner simulator, for each firmware: reads, commands with
readback, and every fault as the driver sees it. Addresses 127.2.<n>.x (and
127.1.140-149.x for the BOSer lean-read tests)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from controller.catalog import find_model
from controller.config import MinerConfig
from drivers.base import CommandOutcome, close_drivers
from drivers.mapping import FirmwareKind
from drivers.poller import FleetPoller
from drivers.pyasic_driver import DriverSettings, PyasicDriver
from simulators.miners.fleet import SimFleet, make_specs

pytestmark = pytest.mark.integration
TIME_SCALE = 60.0  # 120 s boot -> 2 s
SETTINGS = DriverSettings(
    read_timeout_seconds=1.0,
    command_timeout_seconds=1.0,
    command_retries=1,
    retry_backoff_seconds=0.05,
    verify_window_seconds=1.0,
    verify_interval_seconds=0.1,
)
FIRMWARES = {"luxos": 10, "braiins": 20}  # firmware -> third octet base


@dataclass
class Site:
    sim: SimFleet
    drivers: list[PyasicDriver]
    firmware: str


_counter = iter(range(200))


@pytest.fixture(params=sorted(FIRMWARES))
async def site(request: pytest.FixtureRequest) -> AsyncIterator[Site]:
    async with _site(request.param) as s:
        yield s


@pytest.fixture
async def luxos_site() -> AsyncIterator[Site]:
    async with _site("luxos") as s:
        yield s


@contextlib.asynccontextmanager
async def _site(firmware: str) -> AsyncIterator[Site]:
    # a fresh /24 per test: no listener of a previous test can linger in the way
    base_ip = f"127.2.{FIRMWARES[firmware] + next(_counter) % 10}.1"
    specs = make_specs(4, f"Antminer S19j Pro:{firmware}:1", base_ip)
    async with SimFleet(specs, time_scale=TIME_SCALE) as sim:
        drivers = [
            PyasicDriver(
                MinerConfig(address=s.address, model=s.model, firmware=s.firmware, name=s.name),
                model=find_model(s.model, s.firmware),
                settings=SETTINGS,
            )
            for s in specs
        ]
        try:
            yield Site(sim, drivers, firmware)
        finally:
            await close_drivers(drivers)


async def test_read_state_fields(site: Site) -> None:
    driver = site.drivers[0]
    sim_miner = site.sim.miners[driver.address]
    # Braiins: temperatures, fans and identity come with the (staggered) detail read,
    # one of every detail_every_reads reads, and are carried forward in between
    for _ in range(driver.settings.detail_every_reads):
        state = await driver.read_state()
    assert state.reachable, state.error
    assert state.miner_id == driver.miner_id
    assert state.is_mining is True
    assert state.watts == pytest.approx(sim_miner.true_watts(), rel=0.05)
    assert state.power_limit_watts == sim_miner.power_target_watts
    assert state.hashrate_ths == pytest.approx(sim_miner.hashrate_ths(), rel=0.05)
    assert state.temperature_c is not None and state.fan_rpm and state.uptime_seconds is not None
    if site.firmware == "braiins":
        assert state.hostname == sim_miner.hostname and state.mac == sim_miner.mac
    # built from the inventory: no detection round-trip
    assert driver.firmware is FirmwareKind(site.firmware)


async def test_set_power_limit_reads_back_applied_watts(site: Site) -> None:
    driver = site.drivers[0]
    result = await driver.set_power_limit(2200)
    assert result.outcome is CommandOutcome.OK, result.detail
    expected = 2000 if site.firmware == "luxos" else 2200  # LuxOS: highest profile <= W
    assert result.applied_watts == expected
    assert result.requested_watts == 2200
    assert site.sim.miners[driver.address].power_target_watts == expected
    assert (await driver.read_state()).power_limit_watts == expected


async def test_luxos_limits_read_the_profiles_once_and_keep_atm(luxos_site: Site) -> None:
    site = luxos_site
    driver = site.drivers[0]
    sim_miner = site.sim.miners[driver.address]
    miner = await driver.pyasic_miner()
    config_reads = 0
    real_get_config = miner.get_config

    async def counting_get_config() -> object:
        nonlocal config_reads
        config_reads += 1
        return await real_get_config()

    miner.get_config = counting_get_config
    for watts, expected in ((2600, 2500), (1600, 1500), (3050, 3050)):
        result = await driver.set_power_limit(watts)
        assert result.outcome is CommandOutcome.OK, result.detail
        assert result.applied_watts == expected == sim_miner.power_target_watts
        # ATM is the operator's setting: off for the profileset only, then back on
        assert (await miner.atm_enabled()) is True
    assert config_reads == 1  # profile names asked once, not on every cut


def _record_rpc(pyasic_miner: Any) -> list[str]:
    """Every RPC command the pyasic object sends (multicommands joined with '+')."""
    sent: list[str] = []
    rpc = pyasic_miner.rpc
    real_send = rpc.send_command

    async def send_command(command: str, *args: Any, **kwargs: Any) -> Any:
        sent.append(command)
        return await real_send(command, *args, **kwargs)

    rpc.send_command = send_command
    return sent


async def test_luxos_first_read_logs_on_and_learns_the_profiles_so_no_command_has_to(
    luxos_site: Site,
) -> None:
    driver = luxos_site.drivers[0]
    miner = await driver.pyasic_miner()
    sent = _record_rpc(miner)
    assert (await driver.read_state()).reachable
    assert miner.rpc.session_token is not None
    assert "logon" in sent and any("tempctrl" in c for c in sent)
    sent.clear()
    assert (await driver.read_state()).reachable
    assert (await driver.stop()).outcome is CommandOutcome.OK
    assert (await driver.set_power_limit(2600)).applied_watts == 2500
    assert (await driver.resume()).outcome is CommandOutcome.OK
    assert not {"session", "logon"} & set(sent)
    assert not any("tempctrl" in c for c in sent)  # pyasic's config read came with the first read


async def test_luxos_a_session_the_firmware_dropped_is_replaced_not_a_refusal(
    luxos_site: Site,
) -> None:
    """pyasic's LuxOS stop and resume answer False for any error, an invalid
    session included, and keep the dead session forever: a rebooted miner would
    refuse every stop. The driver logs on again once before calling it refused,
    and the next read learns the profile names again ahead of the next cut."""
    driver = luxos_site.drivers[0]
    sim_miner = luxos_site.sim.miners[driver.address]
    miner = await driver.pyasic_miner()
    assert (await driver.read_state()).reachable
    firmware = luxos_site.sim._servers[driver.address].firmware  # type: ignore[attr-defined]
    firmware.session_id = ""  # the firmware forgot it (a reboot, a logoff elsewhere)
    assert (await driver.stop()).outcome is CommandOutcome.OK
    assert sim_miner.is_sleeping
    assert miner.rpc.session_token == firmware.session_id != ""
    firmware.session_id = ""
    assert (await driver.resume()).outcome is CommandOutcome.OK
    sent = _record_rpc(miner)
    assert (await driver.read_state()).reachable
    assert any("tempctrl" in c for c in sent)  # pyasic's config read: the profile names
    sent.clear()
    assert (await driver.set_power_limit(2600)).applied_watts == 2500
    assert not any("tempctrl" in c for c in sent) and "logon" not in sent


async def test_power_limit_below_range_is_rejected(site: Site) -> None:
    result = await site.drivers[0].set_power_limit(500)
    assert result.outcome is CommandOutcome.REJECTED


async def test_stop_then_resume(site: Site) -> None:
    driver = site.drivers[0]
    sim_miner = site.sim.miners[driver.address]
    stopped = await driver.stop()
    assert stopped.outcome is CommandOutcome.OK, stopped.detail
    assert sim_miner.is_sleeping
    assert (await driver.read_state()).is_mining is False
    resumed = await driver.resume()
    assert resumed.outcome is CommandOutcome.OK, resumed.detail  # verified: left the sleep floor
    assert not sim_miner.is_sleeping
    await asyncio.sleep(120 / TIME_SCALE + 0.5)  # boot
    assert (await driver.read_state()).is_mining is True


async def test_unreachable_is_fast(site: Site) -> None:
    driver = site.drivers[1]
    site.sim.set_fault(driver.address, "unreachable")
    await asyncio.sleep(0.1)
    started = time.monotonic()
    state = await driver.read_state()
    assert not state.reachable and state.error
    result = await driver.stop()
    assert result.outcome is CommandOutcome.ERROR
    # fast, not a hang: well under one read timeout even on 2 busy CI cores
    assert time.monotonic() - started < 3.0


async def test_blackhole_times_out_not_hangs(site: Site) -> None:
    driver = site.drivers[1]
    site.sim.set_fault(driver.address, "blackhole")
    started = time.monotonic()
    state = await driver.read_state()
    assert not state.reachable and "no reply within" in (state.error or "")
    assert time.monotonic() - started < SETTINGS.read_timeout_seconds + 0.3
    started = time.monotonic()
    result = await driver.set_power_limit(2000)
    assert result.outcome is CommandOutcome.TIMEOUT
    bound = (SETTINGS.command_retries + 1) * SETTINGS.command_timeout_seconds + 0.5
    assert time.monotonic() - started < bound


async def test_malformed_is_error(site: Site) -> None:
    driver = site.drivers[2]
    site.sim.set_fault(driver.address, "malformed")
    assert not (await driver.read_state()).reachable
    for result in (await driver.set_power_limit(2000), await driver.stop()):
        assert result.outcome is CommandOutcome.ERROR, result.detail


async def test_ignore_commands_is_unverified(site: Site) -> None:
    driver = site.drivers[3]
    site.sim.set_fault(driver.address, "ignore_commands")
    stop = await driver.stop()
    assert stop.outcome is CommandOutcome.UNVERIFIED, stop.detail
    limit = await driver.set_power_limit(2000)
    if site.firmware == "luxos":
        # the LuxOS sim also ignores atmset, then refuses profileset while ATM is
        # on (see report): the driver must not call that OK either way
        assert limit.outcome in (CommandOutcome.UNVERIFIED, CommandOutcome.REJECTED)
    else:
        assert limit.outcome is CommandOutcome.UNVERIFIED, limit.detail
    assert site.sim.miners[driver.address].is_mining


async def test_slow_within_and_over_timeout(site: Site) -> None:
    driver = site.drivers[3]
    # LuxOS reads in one RPC round trip; BOSer reads need a Login then calls
    site.sim.set_fault(driver.address, "slow", delay_seconds=0.2)
    state = await driver.read_state()
    assert state.reachable, state.error
    site.sim.set_fault(driver.address, "slow", delay_seconds=2.0)
    started = time.monotonic()
    state = await driver.read_state()
    assert not state.reachable and "no reply within" in (state.error or "")
    assert time.monotonic() - started < SETTINGS.read_timeout_seconds + 0.3


async def test_poll_with_blackholed_miner(site: Site) -> None:
    site.sim.set_fault(site.drivers[0].address, "blackhole")
    site.sim.set_fault(site.drivers[1].address, "unreachable")
    await asyncio.sleep(0.1)
    poller = FleetPoller(
        {d.miner_id: d for d in site.drivers},
        max_concurrency=4,
        read_timeout_seconds=SETTINGS.read_timeout_seconds,
    )
    started = time.monotonic()
    snap = await poller.poll()
    assert time.monotonic() - started < poller.deadline_seconds + 0.2
    assert snap.reachable_count == 2
    assert not snap.states[site.drivers[0].miner_id].reachable


async def test_unknown_model_falls_back_to_detection(site: Site) -> None:
    real = site.drivers[0]
    miner = MinerConfig(address=real.address, model="Mystery 9000", firmware=site.firmware)  # type: ignore[arg-type]
    driver = PyasicDriver(miner, settings=SETTINGS)
    state = await driver.read_state()
    assert state.reachable, state.error
    assert driver.firmware is FirmwareKind(site.firmware)


# ------------------------------------------- BOSer lean read (one RPC call)
# Addresses 127.1.140.x - 127.1.149.x, a fresh /24 per test.

_lean_counter = iter(range(1000))


@dataclass
class Traffic:
    """Calls made through one pyasic BOSer object, recorded on the instance only."""

    grpc: list[str]
    logins: int
    rpc: list[str]


def _record(pyasic_miner: object) -> Traffic:
    traffic = Traffic(grpc=[], logins=0, rpc=[])
    web: Any = pyasic_miner.web  # type: ignore[attr-defined]
    rpc: Any = pyasic_miner.rpc  # type: ignore[attr-defined]
    send, login, rpc_send = web.send_command, web._get_auth, rpc.send_command

    async def send_command(command: str, *args: Any, **kwargs: Any) -> Any:
        traffic.grpc.append(command)
        return await send(command, *args, **kwargs)

    async def get_auth() -> Any:
        traffic.logins += 1
        return await login()

    async def rpc_send_command(command: str, *args: Any, **kwargs: Any) -> Any:
        traffic.rpc.append(command)  # pyasic's multicommand sends through here too
        return await rpc_send(command, *args, **kwargs)

    web.send_command, web._get_auth, rpc.send_command = send_command, get_auth, rpc_send_command
    return traffic


@pytest.fixture
async def boser() -> AsyncIterator[tuple[SimFleet, PyasicDriver, Traffic]]:
    base_ip = f"127.1.{140 + next(_lean_counter) % 10}.1"
    specs = make_specs(1, "Antminer S19j Pro:braiins:1", base_ip)
    settings = dataclasses.replace(SETTINGS, detail_every_reads=5)
    async with SimFleet(specs, time_scale=TIME_SCALE) as sim:
        s = specs[0]
        driver = PyasicDriver(
            MinerConfig(address=s.address, model=s.model, firmware=s.firmware, name=s.name),
            model=find_model(s.model, s.firmware),
            settings=settings,
        )
        traffic = _record(await driver.pyasic_miner())
        while not traffic.grpc:  # lean reads until the staggered detail + identity read
            first = await driver.read_state()
            assert first.reachable, first.error
        assert first.hostname is not None
        traffic.grpc.clear()
        traffic.rpc.clear()
        traffic.logins = 0
        try:
            yield sim, driver, traffic
        finally:
            await driver.close()


LEAN = "summary+devs+tunerstatus"


async def test_braiins_regular_read_is_one_rpc_call_without_grpc(
    boser: tuple[SimFleet, PyasicDriver, Traffic],
) -> None:
    sim, driver, traffic = boser
    sim_miner = sim.miners[driver.address]
    sim.set_fault(driver.address, "underreport", percent=10)  # reported draw != true draw
    before = await driver.read_state()
    state = await driver.read_state()
    assert state.reachable, state.error
    assert traffic.rpc == [LEAN, LEAN] and traffic.grpc == [] and traffic.logins == 0
    assert state.power_limit_watts == sim_miner.power_target_watts
    assert state.watts == pytest.approx(sim_miner.reported_watts(), abs=1.0)
    assert state.watts == pytest.approx(sim_miner.true_watts() * 0.9, rel=0.02)
    assert state.hashrate_ths == pytest.approx(sim_miner.hashrate_ths(), rel=0.01)
    assert state.is_mining is True
    assert state.uptime_seconds is not None and state.uptime_seconds >= 0
    assert state.errors == ()
    # carried from the detail read, not re-read
    assert state.hostname == sim_miner.hostname and state.mac == sim_miner.mac
    assert state.temperature_c is not None and state.fan_rpm
    assert (state.temperature_c, state.fan_rpm) == (before.temperature_c, before.fan_rpm)


async def test_braiins_sleeping_miner_reads_not_mining_over_rpc(
    boser: tuple[SimFleet, PyasicDriver, Traffic],
) -> None:
    sim, driver, traffic = boser
    sim_miner = sim.miners[driver.address]
    sim_miner.stop()  # straight on the simulator: the read alone is under test
    await asyncio.sleep(0.2)
    state = await driver.read_state()
    assert state.reachable, state.error
    assert sim_miner.is_sleeping
    assert state.is_mining is False
    assert state.hashrate_ths == 0.0
    assert state.watts == pytest.approx(sim_miner.reported_watts(), abs=1.0)
    assert state.power_limit_watts == sim_miner.power_target_watts
    assert traffic.grpc == [] and traffic.rpc == [LEAN]


async def test_braiins_commands_verify_through_lean_readbacks(
    boser: tuple[SimFleet, PyasicDriver, Traffic],
) -> None:
    sim, driver, traffic = boser
    sim_miner = sim.miners[driver.address]
    limit = await driver.set_power_limit(2400)
    assert limit.outcome is CommandOutcome.OK, limit.detail
    assert limit.applied_watts == 2400 == sim_miner.power_target_watts
    stop = await driver.stop()
    assert stop.outcome is CommandOutcome.OK, stop.detail
    assert sim_miner.is_sleeping
    resume = await driver.resume()
    assert resume.outcome is CommandOutcome.OK, resume.detail
    assert not sim_miner.is_sleeping
    # gRPC only for the commands themselves; every readback was the RPC multicommand
    assert traffic.grpc == ["set_power_target", "pause_mining", "resume_mining"]
    assert traffic.rpc and set(traffic.rpc) == {LEAN}
    await asyncio.sleep(120 / TIME_SCALE + 0.5)  # boot
    state = await driver.read_state()
    assert state.is_mining is True and state.power_limit_watts == 2400


async def test_braiins_lean_read_faults_match_the_get_data_path(
    boser: tuple[SimFleet, PyasicDriver, Traffic],
) -> None:
    sim, driver, traffic = boser
    sim.set_fault(driver.address, "blackhole")
    started = time.monotonic()
    state = await driver.read_state()
    assert not state.reachable and state.error == "read: no reply within 1 s"
    assert time.monotonic() - started < SETTINGS.read_timeout_seconds + 0.3
    sim.clear_fault(driver.address)
    sim.set_fault(driver.address, "malformed")
    state = await driver.read_state()
    assert not state.reachable and "no data in reply" in (state.error or "")
    sim.clear_fault(driver.address)
    sim.set_fault(driver.address, "unreachable")
    await asyncio.sleep(0.1)
    state = await driver.read_state()
    assert not state.reachable and "no data in reply" in (state.error or "")
    assert traffic.grpc == [] and traffic.logins == 0
