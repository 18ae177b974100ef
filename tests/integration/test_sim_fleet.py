"""The fleet API: specs from a mix, inventory files, bind errors, the site meter."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from controller.config import MinerConfig, load_inventory
from simulators.miners.fleet import FleetError, MinerSpec, SimFleet, make_specs, write_inventory

pytestmark = pytest.mark.integration


def test_make_specs_splits_by_share_on_consecutive_ips() -> None:
    specs = make_specs(10, "Antminer S19j Pro:braiins:3, antminer s21:luxos:1", "127.1.105.250")
    assert [s.address for s in specs[:7]] == [
        "127.1.105.250", "127.1.105.251", "127.1.105.252", "127.1.105.253", "127.1.105.254",
        "127.1.106.1", "127.1.106.2",
    ]
    assert sum(s.firmware == "braiins" for s in specs) == 8  # 7.5 -> largest remainder
    assert {s.model for s in specs} == {"Antminer S19j Pro", "Antminer S21"}
    assert len({s.name for s in specs}) == 10


@pytest.mark.parametrize(
    ("mix", "base_ip", "message"),
    [
        ("Antminer S19j Pro:braiins", "127.1.0.1", "MODEL:FIRMWARE:SHARE"),
        ("Antminer S19j Pro:braiins:0", "127.1.0.1", "share must be > 0"),
        ("Antminer S19j Pro:braiins:x", "127.1.0.1", "not a number"),
        ("Antminer S19 XP:braiins:1", "127.1.0.1", "unknown model"),
        ("Antminer S19j Pro:braiins:1", "192.168.1.1", "not in 127.0.0.0/8"),
        ("Antminer S19j Pro:braiins:1", "127.255.255.254", "run past"),
    ],
)
def test_make_specs_errors(mix: str, base_ip: str, message: str) -> None:
    with pytest.raises(FleetError, match=message):
        make_specs(3, mix, base_ip)


def test_inventory_round_trips_through_the_config_loader(tmp_path: Path) -> None:
    specs = make_specs(4, "Antminer S19j Pro:luxos:1,Antminer S21:braiins:1", "127.1.105.1")
    path = tmp_path / "inv.toml"
    write_inventory(specs, path)
    loaded = [MinerConfig.model_validate(m) for m in load_inventory(path)]
    assert [(m.address, m.name, m.model, m.firmware) for m in loaded] == [
        (s.address, s.name, s.model, s.firmware) for s in specs
    ]


async def test_bind_failure_names_the_address() -> None:
    spec = MinerSpec("127.1.105.1", "Antminer S21", "luxos")
    async with SimFleet([spec]):
        with pytest.raises(FleetError, match=r"127\.1\.105\.1"):
            await SimFleet([spec]).start()


async def test_meter_sums_true_watts_with_injected_clock() -> None:
    now = [0.0]
    specs = make_specs(3, "Antminer S21:braiins:1", "127.1.105.10")
    fleet = SimFleet(specs, clock=lambda: now[0], start_mining=False)
    assert fleet.true_total_watts() == 3 * 35
    fleet.miners["127.1.105.10"].resume()
    now[0] = 1_000.0
    assert fleet.true_total_watts() == pytest.approx(3500 + 2 * 35, rel=1e-3)
    await asyncio.sleep(0)


def test_duplicate_address_and_unknown_model_rejected() -> None:
    spec = MinerSpec("127.1.105.1", "Antminer S21", "luxos")
    with pytest.raises(FleetError, match="used twice"):
        SimFleet([spec, spec])
    with pytest.raises(FleetError, match="unknown model"):
        SimFleet([MinerSpec("127.1.105.1", "Antminer S19 XP", "braiins")])
