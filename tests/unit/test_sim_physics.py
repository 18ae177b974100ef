"""Physics of a simulated miner, driven by plain numbers (no clock reads)."""

from __future__ import annotations

import pytest

from controller.catalog import find_model
from simulators.miners.physics import MinerPhysics, Phase

LUX = find_model("Antminer S19j Pro", "luxos")
S21 = find_model("Antminer S21", "braiins")


def test_starts_settled_at_default_target() -> None:
    p = MinerPhysics(LUX, now_seconds=100.0)
    assert p.phase(100.0) is Phase.MINING
    assert p.target_watts == LUX.max_target_watts
    assert p.true_watts(100.0) == pytest.approx(LUX.max_target_watts)
    assert p.hashrate_ths(100.0) == pytest.approx(LUX.hashrate_ths_at(LUX.max_target_watts))


def test_power_settles_exponentially_toward_new_target() -> None:
    p = MinerPhysics(LUX, now_seconds=0.0, power_tau_seconds=4.0)
    p.set_target(2000, 0.0)
    assert p.true_watts(0.0) == pytest.approx(3050)
    one_tau = p.true_watts(4.0)
    assert one_tau == pytest.approx(2000 + 1050 * 0.36788, rel=1e-3)
    assert p.true_watts(40.0) == pytest.approx(2000, abs=1)
    assert p.hashrate_ths(40.0) == pytest.approx(LUX.hashrate_ths_at(p.true_watts(40.0)))


def test_retarget_mid_ramp_is_continuous() -> None:
    p = MinerPhysics(LUX, now_seconds=0.0)
    p.set_target(1100, 0.0)
    before = p.true_watts(2.0)
    p.set_target(3050, 2.0)
    assert p.true_watts(2.0) == pytest.approx(before)
    assert p.true_watts(60.0) == pytest.approx(3050, abs=1)


def test_stop_falls_to_sleep_watts_within_seconds() -> None:
    p = MinerPhysics(S21, now_seconds=0.0)
    p.stop(10.0)
    assert p.is_sleeping(10.0)
    assert p.hashrate_ths(10.0) == 0.0
    assert p.true_watts(20.0) == pytest.approx(S21.sleep_watts, abs=1)


def test_resume_boots_then_ramps() -> None:
    p = MinerPhysics(S21, now_seconds=0.0, mining=False)
    assert p.true_watts(0.0) == S21.sleep_watts
    p.resume(10.0)
    assert p.is_booting(10.0)
    mid_boot = 10.0 + S21.boot_seconds / 2
    assert p.true_watts(mid_boot) < 0.1 * S21.nameplate_watts + 1
    assert p.hashrate_ths(mid_boot) == 0.0
    assert p.boot_remaining_seconds(mid_boot) == pytest.approx(S21.boot_seconds / 2)
    after = 10.0 + S21.boot_seconds + 30.0
    assert p.is_mining(after)
    assert p.true_watts(after) == pytest.approx(S21.max_target_watts, rel=1e-3)


def test_time_scale_shortens_boot_and_ramps() -> None:
    p = MinerPhysics(S21, now_seconds=0.0, mining=False, time_scale=100.0)
    p.resume(0.0)
    assert p.boot_remaining_seconds(0.0) == pytest.approx(S21.boot_seconds / 100)
    assert p.is_mining(S21.boot_seconds / 100 + 0.001)
    assert p.true_watts(S21.boot_seconds / 100 + 1.0) == pytest.approx(S21.max_target_watts, rel=1e-3)


def test_reboot_returns_to_default_target_and_resets_uptime() -> None:
    p = MinerPhysics(LUX, now_seconds=0.0)
    p.set_target(1500, 0.0)
    assert p.uptime_seconds(50.0) == 50
    p.reboot(50.0)
    assert p.is_booting(51.0)
    assert p.target_watts == LUX.max_target_watts
    assert p.uptime_seconds(60.0) == 10


def test_target_change_while_asleep_applies_after_wake() -> None:
    p = MinerPhysics(LUX, now_seconds=0.0, time_scale=10.0)
    p.stop(0.0)
    p.set_target(1500, 1.0)
    assert p.true_watts(5.0) == pytest.approx(LUX.sleep_watts, abs=1)
    p.resume(5.0)
    assert p.true_watts(5.0 + LUX.boot_seconds / 10 + 10.0) == pytest.approx(1500, rel=1e-3)


def test_temperatures_and_fans_follow_power() -> None:
    p = MinerPhysics(S21, now_seconds=0.0)
    hot = (p.board_temp_celsius(0.0), p.chip_temp_celsius(0.0), p.fan_rpm(0.0))
    p.stop(0.0)
    cold = (p.board_temp_celsius(60.0), p.chip_temp_celsius(60.0), p.fan_rpm(60.0))
    assert all(h > c for h, c in zip(hot, cold, strict=True))
    assert hot[1] > hot[0]


def test_stop_and_resume_are_idempotent() -> None:
    p = MinerPhysics(LUX, now_seconds=0.0)
    p.resume(1.0)  # already mining: no reboot
    assert p.is_mining(1.0)
    p.stop(2.0)
    p.stop(3.0)
    assert p.true_watts(30.0) == pytest.approx(LUX.sleep_watts, abs=1)


def test_rejects_bad_time_scale() -> None:
    with pytest.raises(ValueError, match="time_scale"):
        MinerPhysics(LUX, now_seconds=0.0, time_scale=0)


def test_transitions_count_each_sleep_and_wake_once() -> None:
    p = MinerPhysics(LUX, now_seconds=0.0)
    p.stop(1.0)
    p.stop(2.0)  # already asleep: no change
    assert p.transitions == 1
    p.resume(3.0)
    p.resume(4.0)  # already booting: no change
    assert p.transitions == 2
    p.set_target(2000, 5.0)  # a new target is not a switch
    p.reboot(6.0)  # a reboot of an awake miner is not a switch either
    assert p.transitions == 2
    p.stop(500.0)
    p.reboot(501.0)  # a reboot wakes a sleeping miner
    assert p.transitions == 4
