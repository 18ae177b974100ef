"""The simulated site's config: under time compression the controller gets the
models the simulator runs, their time constants divided by K and nothing else
changed."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.catalog import find_model
from controller.config import load_config
from simulators.miners.fleet import make_specs
from simulators.site import site_config_text

MIX = "Antminer S19j Pro:braiins:1,Antminer S19j Pro:luxos:1,Antminer S21:braiins:1"


@pytest.mark.parametrize("time_scale", [1.0, 10.0, 180.0])
def test_models_carry_the_simulators_time_scale(tmp_path: Path, time_scale: float) -> None:
    specs = make_specs(6, MIX, "127.90.0.1")
    path = tmp_path / "hashgov.toml"
    path.write_text(site_config_text(specs, broker_port=1883, state_dir=tmp_path / "state",
                                     grant_cap_kw=20.0, time_scale=time_scale))
    config = load_config(path)
    assert len(config.fleet.models) == (0 if time_scale == 1.0 else 3)
    for miner in config.fleet.miners:
        got = config.fleet.model_for(miner)
        builtin = find_model(miner.model, miner.firmware)
        assert got.power_tau_seconds == pytest.approx(builtin.power_tau_seconds / time_scale)
        assert got.sleep_tau_seconds == pytest.approx(builtin.sleep_tau_seconds / time_scale)
        same = {"power_tau_seconds", "sleep_tau_seconds"}  # boot_seconds too: a grace
        assert got.model_dump(exclude=same) == builtin.model_dump(exclude=same)
