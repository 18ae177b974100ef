"""The fleet tracker's beliefs: reads, commands and overrides folded into views."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.config import HashgovConfig, load_config
from controller.fleet import MinerStatus
from controller.tracker import UNRESPONSIVE_RETRY_SECONDS, FleetTracker, Overrides
from drivers.base import CommandKind, CommandOutcome, CommandResult, MinerState

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "hashgov.example.toml"


@pytest.fixture
def config() -> HashgovConfig:
    return load_config(EXAMPLE)


def read(
    mid: str,
    at: float,
    *,
    mining: bool | None,
    watts: float | None = 3000.0,
    reachable: bool = True,
) -> MinerState:
    return MinerState(
        miner_id=mid,
        reachable=reachable,
        read_at_seconds=at,
        is_mining=mining,
        watts=watts,
        power_limit_watts=3000.0,
    )


def result(
    mid: str,
    kind: CommandKind,
    outcome: CommandOutcome = CommandOutcome.OK,
    watts: int | None = None,
) -> CommandResult:
    return CommandResult(mid, kind, outcome, 0.1, watts)


def test_unread_miner_is_unreachable_and_counted_at_nameplate(config: HashgovConfig) -> None:
    tracker = FleetTracker(config)
    view = tracker.view("row1-01", 0.0)
    assert view.status is MinerStatus.UNREACHABLE
    assert not view.controllable
    assert view.assumed_watts == view.model.nameplate_watts


def test_excluded_by_config_and_operator_include(config: HashgovConfig) -> None:
    tracker = FleetTracker(config)
    tracker.observe(read("row3-02", 1.0, mining=True, watts=2000.0))
    assert tracker.view("row3-02", 2.0).status is MinerStatus.EXCLUDED
    assert tracker.view("row3-02", 2.0).assumed_watts == 2000.0
    tracker.set_overrides(Overrides(included=frozenset({"row3-02"})))
    assert tracker.view("row3-02", 2.0).status is MinerStatus.MINING
    tracker.set_overrides(Overrides(excluded=frozenset({"row1-01"}), pinned=frozenset({"row1-02"})))
    assert tracker.view("row1-01", 2.0).excluded
    assert tracker.view("row1-02", 2.0).pinned


def test_stop_then_read_is_sleeping_and_switch_time_recorded(config: HashgovConfig) -> None:
    tracker = FleetTracker(config)
    tracker.observe(read("row1-01", 1.0, mining=True))
    tracker.command_sent(result("row1-01", CommandKind.STOP), 2.0)
    view = tracker.view("row1-01", 2.5)
    assert view.status is MinerStatus.SLEEPING, "the verified command is newer than the read"
    assert view.switched_at_seconds == 2.0
    tracker.observe(read("row1-01", 3.0, mining=False, watts=30.0))
    assert tracker.view("row1-01", 3.0).status is MinerStatus.SLEEPING


def test_resume_boots_then_mines_or_is_marked_unresponsive(config: HashgovConfig) -> None:
    tracker = FleetTracker(config)
    tracker.observe(read("row1-01", 1.0, mining=False, watts=30.0))
    tracker.command_sent(result("row1-01", CommandKind.RESUME), 2.0)
    assert tracker.view("row1-01", 3.0).status is MinerStatus.BOOTING
    tracker.observe(read("row1-01", 10.0, mining=False, watts=100.0))
    assert tracker.view("row1-01", 10.0).status is MinerStatus.BOOTING
    tracker.observe(read("row1-01", 60.0, mining=True))
    assert tracker.view("row1-01", 60.0).status is MinerStatus.MINING

    tracker.command_sent(result("row1-02", CommandKind.RESUME), 100.0)
    tracker.observe(read("row1-02", 101.0, mining=False, watts=30.0))
    boot = tracker.record("row1-02").model.boot_seconds
    late = 100.0 + boot * 2 + config.fleet.poll_interval_seconds
    tracker.observe(read("row1-02", late, mining=False, watts=30.0))
    view = tracker.view("row1-02", late)
    assert view.status is MinerStatus.UNRESPONSIVE and not view.verified
    assert view.assumed_watts >= view.model.nameplate_watts


def test_unverified_command_marks_unresponsive_until_retry(config: HashgovConfig) -> None:
    tracker = FleetTracker(config)
    tracker.observe(read("row1-01", 1.0, mining=True))
    tracker.command_sent(result("row1-01", CommandKind.STOP, CommandOutcome.UNVERIFIED), 2.0)
    assert tracker.view("row1-01", 3.0).status is MinerStatus.UNRESPONSIVE
    later = 2.0 + UNRESPONSIVE_RETRY_SECONDS + 1
    tracker.observe(read("row1-01", later, mining=True))
    assert tracker.view("row1-01", later).status is MinerStatus.MINING


def test_miner_that_keeps_mining_after_stop_becomes_unresponsive(config: HashgovConfig) -> None:
    tracker = FleetTracker(config)
    tracker.command_sent(result("row1-01", CommandKind.STOP), 1.0)
    tracker.observe(read("row1-01", 5.0, mining=True))
    assert tracker.view("row1-01", 5.0).status is MinerStatus.MINING  # once: maybe a reboot
    tracker.observe(read("row1-01", 15.0, mining=True))
    assert tracker.view("row1-01", 15.0).status is MinerStatus.UNRESPONSIVE


def test_failed_command_changes_no_belief(config: HashgovConfig) -> None:
    tracker = FleetTracker(config)
    tracker.observe(read("row1-01", 1.0, mining=True))
    tracker.command_sent(result("row1-01", CommandKind.STOP, CommandOutcome.TIMEOUT), 2.0)
    assert tracker.view("row1-01", 2.0).status is MinerStatus.MINING


def test_power_limit_from_command_then_read(config: HashgovConfig) -> None:
    tracker = FleetTracker(config)
    tracker.observe(read("row1-01", 1.0, mining=True))
    assert tracker.view("row1-01", 1.0).power_limit_watts == 3000
    tracker.command_sent(result("row1-01", CommandKind.SET_POWER_LIMIT, watts=2200), 2.0)
    view = tracker.view("row1-01", 2.0)
    assert view.power_limit_watts == 2200
    assert view.assumed_watts == 3000.0, "until a read shows it, the old draw is assumed"


def test_reconfigure_keeps_known_miners(config: HashgovConfig) -> None:
    tracker = FleetTracker(config)
    tracker.observe(read("row1-01", 1.0, mining=True))
    smaller = config.model_copy(
        update={"fleet": config.fleet.model_copy(update={"miners": config.fleet.miners[:2]})}
    )
    tracker.reconfigure(smaller)
    assert tracker.miner_ids == ["row1-01", "row1-02"]
    assert tracker.view("row1-01", 2.0).status is MinerStatus.MINING


def test_read_without_draw_or_mining_flag_counts_as_unreachable(config: HashgovConfig) -> None:
    """A garbled reply that yields only fan speeds must not make a 3 kW miner look asleep."""
    tracker = FleetTracker(config)
    tracker.observe(MinerState("row1-01", True, 1.0, is_mining=None, watts=None, fan_rpm=(6000,)))
    view = tracker.view("row1-01", 1.0)
    assert view.status is MinerStatus.UNREACHABLE
    assert view.assumed_watts >= view.model.nameplate_watts


def test_command_age_counts_from_a_command_the_last_read_has_not_seen(
    config: HashgovConfig,
) -> None:
    tracker = FleetTracker(config)
    tracker.observe(read("row1-01", 10.0, mining=True))
    assert tracker.view("row1-01", 11.0).commanded_age_seconds(11.0) is None
    tracker.command_sent(result("row1-01", CommandKind.SET_POWER_LIMIT, watts=2000), 12.0)
    assert tracker.view("row1-01", 14.5).commanded_age_seconds(14.5) == pytest.approx(2.5)
    tracker.observe(read("row1-01", 15.0, mining=True, watts=2000.0))
    assert tracker.view("row1-01", 16.0).commanded_age_seconds(16.0) is None, "the read saw it"


def test_a_view_is_kept_until_its_miner_changes_or_its_grace_runs_out(
    config: HashgovConfig,
) -> None:
    """Rounds rebuild only the views of miners read or commanded since (10,000-miner
    sites): an unchanged miner keeps its view, any change or a boot grace running
    out gives a new one."""
    tracker = FleetTracker(config)
    state = read("row1-01", 1.0, mining=True)
    tracker.observe(state)
    first = tracker.view("row1-01", 2.0)
    assert tracker.view("row1-01", 50.0) is first, "nothing changed"
    tracker.observe(state)  # a poll that missed the miner hands its last read over again
    assert tracker.view("row1-01", 50.0) is first
    tracker.observe(read("row1-01", 51.0, mining=True, watts=2500.0))
    read_again = tracker.view("row1-01", 52.0)
    assert read_again is not first and read_again.measured_watts == 2500.0
    # a change made outside the tracker's own methods (the plan-state restore) counts too
    tracker.record("row1-01").switched_at_seconds = 40.0
    assert tracker.view("row1-01", 53.0).switched_at_seconds == 40.0
    tracker.set_overrides(Overrides(pinned=frozenset({"row1-01"})))
    assert tracker.view("row1-01", 54.0).pinned
    # stopped, then resumed and not hashing yet: booting, until the grace runs out
    tracker.command_sent(result("row1-01", CommandKind.STOP), 60.0)
    tracker.observe(read("row1-01", 61.0, mining=False, watts=30.0))
    tracker.command_sent(result("row1-01", CommandKind.RESUME), 62.0)
    booting = tracker.view("row1-01", 63.0)
    assert booting.status is MinerStatus.BOOTING
    grace_over = 62.0 + booting.model.boot_seconds * 2 + config.fleet.poll_interval_seconds
    assert tracker.view("row1-01", grace_over).status is MinerStatus.UNRESPONSIVE
