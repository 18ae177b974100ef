"""Faults of simulated miners, as pyasic sees them (Python API and admin HTTP API)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pyasic
import pytest
from pyasic.miners.antminer.bosminer import BOSMinerS19jPro
from pyasic.miners.antminer.luxos import LUXMinerS19jPro

from simulators.miners.faults import FaultError
from simulators.miners.fleet import SimFleet, make_specs
from simulators.miners.testing import eventually

pytestmark = pytest.mark.integration
LUX_IP = "127.1.103.1"
BOS_IP = "127.1.103.2"
TIME_SCALE = 60.0


@pytest.fixture
async def fleet() -> AsyncIterator[SimFleet]:
    specs = make_specs(2, "Antminer S19j Pro:luxos:1,Antminer S19j Pro:braiins:1", "127.1.103.1")
    async with SimFleet(specs, time_scale=TIME_SCALE, admin_port=0) as sim:
        yield sim


def lux() -> LUXMinerS19jPro:
    return LUXMinerS19jPro(LUX_IP)


def bos() -> BOSMinerS19jPro:
    return BOSMinerS19jPro(BOS_IP)


async def test_unreachable_refuses_fast_and_recovers(fleet: SimFleet) -> None:
    fleet.set_fault(LUX_IP, "unreachable")
    fleet.set_fault(BOS_IP, "unreachable")
    await asyncio.sleep(0.05)
    started = time.monotonic()
    assert await pyasic.get_miner(LUX_IP) is None
    with pytest.raises(pyasic.APIError):
        await lux().get_data()
    with pytest.raises((pyasic.APIError, ConnectionError)):
        await bos().get_data()
    assert time.monotonic() - started < 2.0
    fleet.clear_fault(LUX_IP)
    fleet.clear_fault(BOS_IP)

    async def back() -> bool:
        return await pyasic.get_miner(LUX_IP) is not None

    await eventually(back, what="listener back")
    assert (await bos().get_data()).wattage == 3000


@pytest.mark.parametrize("address", [LUX_IP, BOS_IP])
async def test_blackhole_hangs(fleet: SimFleet, address: str) -> None:
    fleet.set_fault(address, "blackhole")
    miner = lux() if address == LUX_IP else bos()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(miner.get_data(), timeout=0.5)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(miner.stop_mining(), timeout=0.5)
    assert not fleet.miners[address].is_sleeping


async def test_slow_delays_replies(fleet: SimFleet) -> None:
    fleet.set_fault(LUX_IP, "slow", delay_seconds=0.4)
    started = time.monotonic()
    await lux().rpc.power()
    assert time.monotonic() - started >= 0.4
    fleet.clear_fault(LUX_IP, "slow")
    started = time.monotonic()
    await lux().rpc.power()
    assert time.monotonic() - started < 0.4


async def test_malformed_gives_api_error(fleet: SimFleet) -> None:
    fleet.set_fault(LUX_IP, "malformed")
    with pytest.raises(pyasic.APIError):
        await lux().rpc.power()
    with pytest.raises(pyasic.APIError):
        await lux().get_data()
    fleet.set_fault(BOS_IP, "malformed")
    with pytest.raises(pyasic.APIError):
        await bos().rpc.summary()
    with pytest.raises(pyasic.APIError):
        await bos().get_data()


async def test_ignore_commands_acknowledges_but_changes_nothing(fleet: SimFleet) -> None:
    for address, miner in ((LUX_IP, lux()), (BOS_IP, bos())):
        fleet.set_fault(address, "ignore_commands")
        sim = fleet.miners[address]
        before = sim.power_target_watts
        assert await miner.set_power_limit(1500) is True
        assert await miner.stop_mining() is True
        assert sim.power_target_watts == before and not sim.is_sleeping
        data = await miner.get_data()
        assert data.wattage_limit == before
        assert data.wattage is not None and data.wattage > 2900


async def test_underreport_reports_less_than_truth(fleet: SimFleet) -> None:
    fleet.set_fault(LUX_IP, "underreport", percent=25)
    fleet.set_fault(BOS_IP, "underreport")  # default 20 %
    lux_data, bos_data = await asyncio.gather(lux().get_data(), bos().get_data())
    assert lux_data.wattage == round(0.75 * fleet.miners[LUX_IP].true_watts())
    assert bos_data.wattage == round(0.80 * fleet.miners[BOS_IP].true_watts())
    assert fleet.true_total_watts() == pytest.approx(3050 + 3000)


async def test_reboot_drops_offline_then_mines_at_default_target(fleet: SimFleet) -> None:
    sim = fleet.miners[BOS_IP]
    assert await bos().set_power_limit(1500) is True
    fleet.set_fault(BOS_IP, "reboot")
    assert sim.is_booting and sim.power_target_watts == sim.model.max_target_watts
    await asyncio.sleep(0.05)
    with pytest.raises((pyasic.APIError, ConnectionError)):
        await bos().get_data()

    async def online() -> bool:
        return await pyasic.get_miner(BOS_IP) is not None

    await eventually(online, timeout_seconds=6, what="back after reboot")
    assert "reboot" not in sim.fault_names
    await eventually(lambda: sim.true_watts() > 2900, what="mining at default target")
    assert (await bos().get_data()).wattage_limit == 3000


async def test_fault_validation(fleet: SimFleet) -> None:
    with pytest.raises(FaultError, match="unknown fault"):
        fleet.set_fault(LUX_IP, "gremlins")
    with pytest.raises(FaultError, match="percent"):
        fleet.set_fault(LUX_IP, "underreport", percent=120)
    with pytest.raises(FaultError, match="takes no parameter"):
        fleet.set_fault(LUX_IP, "blackhole", delay_seconds=1)


async def _http(port: int, method: str, path: str, body: object = None) -> tuple[int, object]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = b"" if body is None else json.dumps(body).encode()
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, content = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(content)


async def test_admin_api(fleet: SimFleet) -> None:
    port = fleet.admin_port
    assert port
    status, miners = await _http(port, "GET", "/miners")
    assert status == 200 and isinstance(miners, list) and len(miners) == 2
    status, meter = await _http(port, "GET", "/meter")
    assert status == 200 and meter == {"true_total_watts": 6050.0, "miners": 2}
    status, state = await _http(
        port, "POST", "/fault", {"address": LUX_IP, "fault": "underreport", "params": {"percent": 50}}
    )
    assert status == 200 and state == fleet.miners[LUX_IP].state()
    assert (await lux().get_data()).wattage == 1525
    status, _ = await _http(port, "DELETE", "/fault", {"address": LUX_IP})
    assert status == 200 and fleet.miners[LUX_IP].fault_names == ()
    assert (await _http(port, "POST", "/fault", {"address": LUX_IP, "fault": "x"}))[0] == 400
    assert (await _http(port, "POST", "/fault", {"address": "127.9.9.9", "fault": "slow"}))[0] == 404
    assert (await _http(port, "GET", "/nope"))[0] == 404
    fleet.miners[BOS_IP].stop()
    status, truth = await _http(port, "GET", "/truth")
    assert status == 200 and isinstance(truth, dict)
    assert {k: truth[k] for k in ("transitions", "sleeping", "miners")} == {
        "transitions": 1, "sleeping": 1, "miners": 2}
    assert 0 < truth["draw_watts"] <= 6050.0 and truth["hashrate_ths"] > 0  # LuxOS one mines
