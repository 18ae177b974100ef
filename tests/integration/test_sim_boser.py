"""Simulated Braiins OS+ (BOSer) miners, seen through unmodified pyasic 0.79."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator

import pyasic
import pytest
from pyasic.miners.backends.braiins_os import BOSer

from simulators.miners.fleet import SimFleet, make_specs
from simulators.miners.testing import eventually

pytestmark = pytest.mark.integration
BASE_IP = "127.1.102.1"
TIME_SCALE = 60.0


@pytest.fixture
async def fleet() -> AsyncIterator[SimFleet]:
    specs = make_specs(2, "Antminer S19j Pro:braiins:1,Antminer S21:braiins:1", BASE_IP)
    async with SimFleet(specs, time_scale=TIME_SCALE) as sim:
        yield sim


async def test_detection_without_partial_support_warning(fleet: SimFleet) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s19 = await pyasic.get_miner("127.1.102.1")
        s21 = await pyasic.get_miner("127.1.102.2")
    assert isinstance(s19, BOSer) and isinstance(s21, BOSer)
    assert type(s19).__name__ == "BOSMinerS19jPro"
    assert type(s21).__name__ == "BOSMinerS21"
    assert s21.make == "AntMiner" and s21.raw_model == "S21"
    assert str(s19.firmware) == "BOS+"
    assert not [w for w in caught if "Partially supported" in str(w.message)]


async def test_get_data_fields(fleet: SimFleet) -> None:
    miner = await pyasic.get_miner("127.1.102.2")
    data = await miner.get_data()
    sim = fleet.miners["127.1.102.2"]
    assert float(data.hashrate) == pytest.approx(sim.hashrate_ths(), rel=0.01)
    assert data.wattage == 3500 and data.wattage_limit == 3500
    assert data.temperature_avg is not None and data.temperature_avg > 50
    assert len(data.hashboards) == 3 and all(b.chip_temp for b in data.hashboards)
    assert len(data.fans) == 4 and all(fan.speed and fan.speed > 1000 for fan in data.fans)
    assert data.is_mining is True
    assert data.uptime is not None and data.uptime >= 0
    assert data.hostname == sim.hostname and data.mac == sim.mac
    assert data.errors == []
    assert data.fw_ver == "24.08" and data.api_ver == "3.7"


async def test_concurrent_logins_are_tolerated(fleet: SimFleet) -> None:
    miners = [pyasic.get_miner("127.1.102.1") for _ in range(3)]
    objs = await asyncio.gather(*miners)
    datas = await asyncio.gather(*(m.get_data() for m in objs))  # ~7 concurrent Logins each
    assert all(d.wattage == 3000 and d.hostname for d in datas)


async def test_power_limit_exact_watts_and_clamped(fleet: SimFleet) -> None:
    miner = await pyasic.get_miner("127.1.102.1")
    sim = fleet.miners["127.1.102.1"]
    assert await miner.set_power_limit(2150) is True
    assert sim.power_target_watts == 2150
    await eventually(lambda: abs(sim.true_watts() - 2150) < 20, what="draw settles at 2150 W")
    data = await miner.get_data()
    assert data.wattage_limit == 2150
    assert data.wattage is not None and abs(data.wattage - 2150) < 20
    # out of range: clamped to the model's range, so pyasic reports False
    assert await miner.set_power_limit(500) is False
    assert sim.power_target_watts == sim.model.min_target_watts
    assert await miner.set_power_limit(9000) is False
    assert sim.power_target_watts == sim.model.max_target_watts


async def test_pause_then_resume_boots_before_drawing(fleet: SimFleet) -> None:
    miner = await pyasic.get_miner("127.1.102.2")
    sim = fleet.miners["127.1.102.2"]
    assert await miner.stop_mining() is True
    await eventually(lambda: sim.true_watts() < 40, what="draw falls to sleep watts")
    data = await miner.get_data()
    assert data.is_mining is False and data.wattage is not None and data.wattage < 40
    assert await miner.resume_mining() is True
    data = await miner.get_data()
    assert data.is_mining is False  # booting: no hashes yet
    assert data.wattage is not None and data.wattage < 500
    await eventually(lambda: sim.true_watts() > 3400, timeout_seconds=8, what="ramp after boot")
    assert (await miner.get_data()).is_mining is True
