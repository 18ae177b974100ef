"""Simulated LuxOS miners, seen through unmodified pyasic 0.79."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator

import pyasic
import pytest
from pyasic.miners.backends.luxminer import LUXMiner

from simulators.miners.fleet import SimFleet, make_specs
from simulators.miners.testing import eventually

pytestmark = pytest.mark.integration
BASE_IP = "127.1.101.1"
TIME_SCALE = 60.0  # 120 s boot -> 2 s


@pytest.fixture
async def fleet() -> AsyncIterator[SimFleet]:
    specs = make_specs(2, "Antminer S19j Pro:luxos:1,Antminer S21:luxos:1", BASE_IP)
    async with SimFleet(specs, time_scale=TIME_SCALE) as sim:
        yield sim


async def test_detection_without_partial_support_warning(fleet: SimFleet) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s19 = await pyasic.get_miner("127.1.101.1")
        s21 = await pyasic.get_miner("127.1.101.2")
    assert isinstance(s19, LUXMiner) and isinstance(s21, LUXMiner)
    assert type(s19).__name__ == "LUXMinerS19jPro"
    assert type(s21).__name__ == "LUXMinerS21"
    assert s19.make == "AntMiner" and s19.raw_model == "S19j Pro"
    assert str(s19.firmware) == "LuxOS"
    assert not [w for w in caught if "Partially supported" in str(w.message)]


async def test_get_data_fields(fleet: SimFleet) -> None:
    miner = await pyasic.get_miner("127.1.101.1")
    data = await miner.get_data()
    sim = fleet.miners["127.1.101.1"]
    assert float(data.hashrate) == pytest.approx(sim.hashrate_ths(), rel=0.01)
    assert data.wattage == 3050 and data.wattage_limit == 3050
    assert data.temperature_avg is not None and data.temperature_avg > 50
    assert len(data.hashboards) == 3 and all(b.chip_temp for b in data.hashboards)
    assert len(data.fans) == 4 and all(fan.speed and fan.speed > 1000 for fan in data.fans)
    assert data.uptime is not None and data.uptime >= 0
    assert data.errors == []
    assert data.is_mining is True
    assert data.fw_ver == "2024.6.18.181313" and data.api_ver == "3.7"
    assert float(data.expected_hashrate) == pytest.approx(104.0, rel=0.01)


async def test_power_limit_is_quantised_to_a_profile(fleet: SimFleet) -> None:
    miner = await pyasic.get_miner("127.1.101.1")
    sim = fleet.miners["127.1.101.1"]
    assert await miner.set_power_limit(2200) is True
    assert sim.power_target_watts == 2000  # highest profile <= 2200
    await eventually(lambda: abs(sim.true_watts() - 2000) < 20, what="draw settles at 2000 W")
    data = await miner.get_data()
    assert data.wattage_limit == 2000
    assert data.wattage is not None and abs(data.wattage - 2000) < 20
    assert await miner.atm_enabled() is True  # pyasic's ATM off/on dance restored it
    # below the lowest profile: pyasic sends nothing and reports failure
    assert await miner.set_power_limit(900) is False
    assert sim.power_target_watts == 2000


async def test_stop_then_resume_boots_before_drawing(fleet: SimFleet) -> None:
    miner = await pyasic.get_miner("127.1.101.2")
    sim = fleet.miners["127.1.101.2"]
    assert await miner.stop_mining() is True
    await eventually(lambda: sim.true_watts() < 40, what="draw falls to sleep watts")
    data = await miner.get_data()
    assert data.wattage is not None and data.wattage < 40
    assert float(data.hashrate) == 0.0
    assert await miner.resume_mining() is True
    assert sim.is_booting and sim.true_watts() < 500
    data = await miner.get_data()
    assert float(data.hashrate) == 0.0 and data.wattage is not None and data.wattage < 500
    await eventually(lambda: sim.true_watts() > 3000, timeout_seconds=8, what="ramp after boot")
    assert not sim.is_booting


async def test_multicommand_and_unknown_command(fleet: SimFleet) -> None:
    miner = await pyasic.get_miner("127.1.101.1")
    reply = await miner.rpc.multicommand("power", "config", "version")
    assert reply["power"][0]["POWER"][0]["Watts"] == 3050
    assert reply["config"][0]["CONFIG"][0]["Profile"] == "3050W"
    with pytest.raises(pyasic.APIError):
        await miner.rpc.send_command("nonsense")
