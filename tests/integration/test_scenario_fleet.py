"""A scenario's sharded fleet: real `hashgov sim miners` processes that pyasic reads."""

from __future__ import annotations

from pathlib import Path

import pyasic
import pytest

from controller.catalog import find_model
from simulators.bench.scenario_fleet import (
    InProcessFleet,
    ShardedFleet,
    auto_shards,
    make_fleet,
)
from simulators.miners.fleet import FleetError, make_specs, read_inventory, write_inventory

MIX = "Antminer S19j Pro:luxos:1,Antminer S21:braiins:1"


def test_auto_shards_keeps_small_fleets_in_process() -> None:
    assert auto_shards(20) == 0
    assert auto_shards(1_000) == 2
    assert auto_shards(10_000) == 8
    assert isinstance(make_fleet(make_specs(3, MIX, "127.1.106.1"), 10.0, 0, Path()),
                      InProcessFleet)


def test_inventory_round_trip_and_named_errors(tmp_path: Path) -> None:
    specs = make_specs(4, MIX, "127.1.106.1")
    path = tmp_path / "inv.toml"
    write_inventory(specs, path)
    assert read_inventory(path) == specs
    path.write_text('[[miners]]\naddress = "127.1.106.1"\nmodel = "Antminer S21"\n'
                    'firmware = "vnish"\n')
    with pytest.raises(FleetError, match=r"miners\[0\]\.firmware"):
        read_inventory(path)
    path.write_text('[[miners]]\naddress = "127.1.106.1"\nfirmware = "luxos"\n')
    with pytest.raises(FleetError, match=r"miners\[0\]\.model"):
        read_inventory(path)


async def test_sharded_fleet_serves_pyasic_sums_truth_and_routes_faults(tmp_path: Path) -> None:
    specs = make_specs(6, MIX, "127.1.106.1")
    fleet = ShardedFleet(specs, 20.0, 2, tmp_path)
    await fleet.start()
    try:
        assert {len(s.specs) for s in fleet.shards} == {3}
        truth = await fleet.truth()
        nameplate = sum(find_model(s.model, s.firmware).max_target_watts for s in specs)
        assert truth.miners == 6 and truth.sleeping == 0 and truth.transitions == 0
        assert truth.draw_watts == pytest.approx(nameplate, rel=1e-3)
        assert fleet.meter_watts() == truth.draw_watts
        for spec in specs[:2]:  # one on each shard, one of each firmware
            miner = await pyasic.get_miner(spec.address)
            assert miner is not None
            data = await miner.get_data()
            assert data.wattage is not None and data.wattage > 0
        await fleet.set_fault(specs[1].address, "unreachable")
        assert await pyasic.get_miner(specs[1].address) is None
        with pytest.raises(FleetError, match="no simulated miner"):
            await fleet.set_fault("127.9.9.9", "slow")
        with pytest.raises(FleetError, match="HTTP 400"):
            await fleet.set_fault(specs[0].address, "no-such-fault")
    finally:
        await fleet.stop()
    assert all(s.proc is not None and s.proc.returncode is not None for s in fleet.shards)


async def test_a_shard_that_cannot_bind_is_named(tmp_path: Path) -> None:
    specs = make_specs(2, MIX, "127.1.106.21")
    squatter = InProcessFleet(specs[1:], 1.0)  # holds the second shard's address
    await squatter.start()
    try:
        fleet = ShardedFleet(specs, 1.0, 2, tmp_path)
        with pytest.raises(FleetError, match=r"shard 1 .*127\.1\.106\.22.*did not start"):
            await fleet.start()
        assert all(s.proc is None or s.proc.returncode is not None for s in fleet.shards)
    finally:
        await squatter.stop()
