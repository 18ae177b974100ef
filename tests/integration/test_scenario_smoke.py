"""The smoke scenario end to end: real mosquitto, plant, simulated fleet, hashgov as a
child process. Asserts safety figures only (timings depend on the machine)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from simulators.bench.scenario import run_scenario
from simulators.bench.scenario_spec import load_scenario

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs mosquitto"),
]

# Fast shed sleeps miners on each drop, and a woken miner boots for 120 simulated
# seconds — a whole step of this short profile — so utilization is well below daily's.
MIN_UTILIZATION = 0.45


@pytest.mark.timeout(90)
async def test_smoke_scenario_is_safe(tmp_path: Path) -> None:
    sc, base_dir = load_scenario("smoke")
    figs, _run, naive = await run_scenario(
        sc, tmp_path, base_ips=("127.203.0.1", "127.204.0.1"), baseline=False, base_dir=base_dir
    )
    assert naive is None
    assert figs["sim_seconds"] >= sc.duration_s * 0.99
    assert figs["shed_events"] >= 1  # the 0.8 -> 0.35 step needs a shed
    assert figs["shed_unresolved"] == 0
    floor = figs["shed_floor_s"] or 0.0
    # no settling tail: without the fast shed, cut targets approach the grant from above
    # for ~20 simulated seconds (more than floor + one control period here)
    assert figs["max_violation_s"] <= floor + figs["control_period_s"], figs
    assert figs["utilization"] > MIN_UTILIZATION, figs
    assert 0.0 < figs["oracle_ratio"] <= 1.0, figs
    assert figs["controller_rss_mib"] > 0
    assert figs["controller_cpu_s"] > 0
    assert figs["decide_samples"] >= 1
    assert (tmp_path / "hashgov" / "series.csv").exists()
