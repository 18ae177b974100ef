"""The actuator: sheds first and at once, raises only for the newest plan,
per-miner order, backoff after failures, nothing sent in shadow mode."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from controller.actuator import Actuator, commands_for
from controller.clock import ManualClock
from controller.config import load_config
from controller.fleet import FleetState, MinerStatus, MinerView
from controller.policy import MinerPlan, Plan
from drivers.base import CommandKind, CommandOutcome, CommandResult, MinerState, Readback

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "hashgov.example.toml"
MODEL = load_config(EXAMPLE).fleet.models[0]  # S19j Pro braiins: 1100..3000 W


def view(mid: str, status: MinerStatus, limit: int | None = 3000) -> MinerView:
    return MinerView(
        mid,
        MODEL,
        status,
        measured_watts=3000.0 if status is MinerStatus.MINING else 30.0,
        power_limit_watts=limit,
    )


def plan_of(*entries: tuple[str, str, int | None]) -> Plan:
    miners = tuple(
        MinerPlan(mid, action, target, 0.0, 0.0, "test") for mid, action, target in entries
    )  # type: ignore[arg-type]
    return Plan(0.0, 0.0, 0.0, 0.0, miners, ())


class FakeDriver:
    """Records calls; each call waits on a gate so tests control ordering."""

    def __init__(
        self,
        mid: str,
        log: list[tuple[str, str]],
        gate: asyncio.Event,
        outcome: CommandOutcome = CommandOutcome.OK,
        readbacks: list[tuple[str, str]] | None = None,
    ) -> None:
        self.miner_id = mid
        self.log = log
        self.gate = gate
        self.outcome = outcome
        self.readbacks = [] if readbacks is None else readbacks  # (miner, "readback")

    async def read_state(self) -> MinerState:
        return MinerState(self.miner_id, True, 0.0)

    async def _cmd(self, kind: CommandKind, watts: int | None = None) -> CommandResult:
        self.log.append((self.miner_id, f"{kind}:{watts}" if watts else str(kind)))
        await self.gate.wait()
        return CommandResult(self.miner_id, kind, self.outcome, 0.01, watts)

    async def set_power_limit(self, watts: int) -> CommandResult:
        return await self._cmd(CommandKind.SET_POWER_LIMIT, watts)

    async def stop(self) -> CommandResult:
        return await self._cmd(CommandKind.STOP)

    async def send_stop(self) -> CommandResult | Readback:
        sent = await self._cmd(CommandKind.STOP)
        if sent.outcome not in (CommandOutcome.OK, CommandOutcome.UNVERIFIED):
            return sent

        async def readback() -> CommandResult:
            self.readbacks.append((self.miner_id, "readback"))
            return sent

        return readback

    async def resume(self) -> CommandResult:
        return await self._cmd(CommandKind.RESUME)

    async def close(self) -> None:
        pass  # keeps no connections


def test_commands_for_plan_differences() -> None:
    fleet = FleetState(
        0.0,
        (
            view("a", MinerStatus.MINING),
            view("b", MinerStatus.SLEEPING),
            view("c", MinerStatus.MINING),
            view("d", MinerStatus.UNREACHABLE),
            view("e", MinerStatus.MINING),
        ),
    )
    work = {
        w.miner_id: w
        for w in commands_for(
            plan_of(
                ("a", "sleep", None),
                ("b", "run", 2000),
                ("c", "run", 2000),
                ("d", "sleep", None),
                ("e", "run", 3000),
            ),
            fleet,
        )
    }
    assert [s.kind for s in work["a"].steps] == [CommandKind.STOP] and work["a"].sheds
    assert [(s.kind, s.watts) for s in work["b"].steps] == [
        (CommandKind.SET_POWER_LIMIT, 2000),
        (CommandKind.RESUME, None),
    ]
    assert not work["b"].sheds and work["b"].pending_watts == 2000
    assert work["c"].sheds and work["c"].steps[0].watts == 2000  # lowering a target is a shed
    assert "d" not in work, "an unreachable miner is not commanded"
    assert "e" not in work, "no command when the miner already has the target"


async def test_sheds_first_and_superseded_raises_are_dropped() -> None:
    log: list[tuple[str, str]] = []
    gate = asyncio.Event()
    drivers = {m: FakeDriver(m, log, gate) for m in "abc"}
    results: list[CommandResult] = []
    actuator = Actuator(drivers, ManualClock(), max_concurrency=8, on_result=results.append)
    fleet = FleetState(
        0.0,
        (
            view("a", MinerStatus.MINING),
            view("b", MinerStatus.SLEEPING),
            view("c", MinerStatus.SLEEPING),
        ),
    )
    actuator.submit(
        commands_for(plan_of(("a", "sleep", None), ("b", "run", 3000), ("c", "sleep", None)), fleet)
    )
    await asyncio.sleep(0)
    assert log == [("a", "stop")], "the raise waits until the shed finished"
    # a newer plan arrives before the shed finishes: the old raise must not be sent
    actuator.submit(
        commands_for(
            plan_of(("a", "sleep", None), ("b", "sleep", None), ("c", "sleep", None)), fleet
        )
    )
    gate.set()
    await actuator.drain()
    assert ("b", "resume") not in log
    assert [r.kind for r in results] == [CommandKind.STOP]


async def test_failed_miner_is_backed_off() -> None:
    log: list[tuple[str, str]] = []
    gate = asyncio.Event()
    gate.set()
    clock = ManualClock()
    drivers = {"a": FakeDriver("a", log, gate, CommandOutcome.TIMEOUT)}
    actuator = Actuator(drivers, clock, max_concurrency=2, on_result=lambda r: None)
    fleet = FleetState(0.0, (view("a", MinerStatus.MINING),))
    work = commands_for(plan_of(("a", "sleep", None)), fleet)
    assert actuator.submit(work) == 1
    await actuator.drain()
    assert actuator.submit(work) == 0, "backed off right after a failure"
    clock.advance(10)
    assert actuator.submit(work) == 1
    await actuator.drain()
    assert len(log) == 2


async def test_shadow_mode_sends_nothing_but_records() -> None:
    log: list[tuple[str, str]] = []
    gate = asyncio.Event()
    gate.set()
    actuator = Actuator(
        {"a": FakeDriver("a", log, gate)},
        ManualClock(),
        max_concurrency=2,
        on_result=lambda r: None,
        dry_run=True,
    )
    fleet = FleetState(0.0, (view("a", MinerStatus.MINING),))
    actuator.submit(commands_for(plan_of(("a", "sleep", None)), fleet))
    await actuator.drain()
    assert log == []
    assert [c.kind for c in actuator.would_send] == [CommandKind.STOP]


def gated(miner_ids: str, max_concurrency: int = 1) -> tuple[list[tuple[str, str]], asyncio.Event, Actuator]:
    """An actuator over FakeDrivers that all wait on one gate: (call log, gate, actuator)."""
    log: list[tuple[str, str]] = []
    gate = asyncio.Event()
    drivers = {m: FakeDriver(m, log, gate) for m in miner_ids}
    actuator = Actuator(drivers, ManualClock(), max_concurrency=max_concurrency,
                        on_result=lambda r: None)
    return log, gate, actuator


def mining(miner_ids: str) -> FleetState:
    return FleetState(0.0, tuple(view(m, MinerStatus.MINING) for m in miner_ids))


async def test_stops_overtake_queued_cuts_when_slots_are_busy() -> None:
    """A trip's stops must not wait behind earlier rounds' target cuts."""
    log, gate, actuator = gated("abcd")
    fleet = mining("abcd")
    actuator.submit(
        commands_for(plan_of(("a", "run", 2000), ("b", "run", 2000), ("c", "run", 2000)), fleet)
    )
    await asyncio.sleep(0)
    assert log == [("a", "set_power_limit:2000")]
    # the next plan still wants b and c cut: they keep their place, behind the stop
    actuator.submit(commands_for(plan_of(("b", "run", 2000), ("c", "run", 2000),
                                         ("d", "sleep", None)), fleet))
    gate.set()
    await actuator.drain()
    assert [m for m, _ in log] == ["a", "d", "b", "c"]


async def test_a_trips_stops_are_all_sent_before_any_is_read_back() -> None:
    """The draw falls when a stop lands, not when it is verified: every stop goes
    out first, then the cuts, then the readbacks. A stopped miner stays busy, and
    its result is recorded, only once read back."""
    log: list[tuple[str, str]] = []
    results: list[tuple[str, str]] = []
    seen_at_first_result: list[object] = []
    gate = asyncio.Event()
    gate.set()
    drivers = {m: FakeDriver(m, log, gate, readbacks=log) for m in "abcd"}

    def on_result(r: CommandResult) -> None:
        if not results:
            seen_at_first_result.extend([list(log), actuator.stopping_watts,
                                         actuator.busy_miners])
        results.append((r.miner_id, str(r.kind)))

    actuator = Actuator(drivers, ManualClock(), max_concurrency=1, on_result=on_result)
    fleet = mining("abcd")
    actuator.submit(commands_for(plan_of(("a", "sleep", None), ("b", "sleep", None),
                                         ("c", "sleep", None), ("d", "run", 2000)), fleet))
    stopping_watts = actuator.stopping_watts
    await actuator.drain()
    assert seen_at_first_result == [
        [("a", "stop"), ("b", "stop"), ("c", "stop"), ("d", "set_power_limit:2000")],
        stopping_watts,  # counted until read back: the meter sees a stop only as it ramps
        frozenset("abcd"),  # none free before its readback (d: its cut is being recorded)
    ]
    assert stopping_watts > 0 and actuator.stopping_watts == 0.0
    assert log[4:] == [("a", "readback"), ("b", "readback"), ("c", "readback")]
    assert results == [("d", "set_power_limit"), ("a", "stop"), ("b", "stop"), ("c", "stop")]
    assert actuator.busy_miners == frozenset()


async def test_a_stop_that_fails_to_send_is_recorded_and_never_read_back() -> None:
    log: list[tuple[str, str]] = []
    results: list[CommandResult] = []
    gate = asyncio.Event()
    gate.set()
    drivers = {"a": FakeDriver("a", log, gate, CommandOutcome.TIMEOUT, readbacks=log)}
    actuator = Actuator(drivers, ManualClock(), max_concurrency=1, on_result=results.append)
    actuator.submit(commands_for(plan_of(("a", "sleep", None)), mining("a")))
    await actuator.drain()
    assert log == [("a", "stop")]
    assert [r.outcome for r in results] == [CommandOutcome.TIMEOUT]
    assert actuator.busy_miners == frozenset() and actuator.stopping_watts == 0.0


async def test_a_newer_plan_decides_every_command_no_worker_has_taken_yet() -> None:
    """At 10,000 miners cuts queued for a minute; a drop's stop skipped every miner
    still queued for one (busy), and a raise queued before a drop still ran."""
    log, gate, actuator = gated("abcd")
    fleet = FleetState(0.0, (view("a", MinerStatus.MINING), view("b", MinerStatus.MINING),
                             view("c", MinerStatus.MINING), view("d", MinerStatus.SLEEPING)))
    first = commands_for(plan_of(("a", "run", 2000), ("b", "run", 2000), ("c", "run", 2500),
                                 ("d", "run", 3000)), fleet)
    actuator.submit(first, headroom_watts=1e6)  # d's raise fits: queued with the cuts
    await asyncio.sleep(0)
    assert log == [("a", "set_power_limit:2000")], "one worker: b, c and d wait"
    # the grant drops: b is to stop, c to be cut as before, d to stay asleep
    second = commands_for(plan_of(("b", "sleep", None), ("c", "run", 2500)), fleet)
    assert actuator.submit(second) == 1, "b is free for this plan; c keeps its place"
    assert actuator.stopping_watts > 0
    gate.set()
    await actuator.drain()
    assert log == [("a", "set_power_limit:2000"), ("b", "stop"), ("c", "set_power_limit:2500")]
    assert actuator.busy_miners == frozenset() and actuator.stopping_watts == 0.0


async def test_a_queued_shed_stays_unless_a_newer_plan_sheds_that_miner_deeper() -> None:
    """A fast shed's stops hold until carried out, though the next round (no fast
    shed) would only cut those miners: replaced by cuts, they landed a minute late."""
    log, gate, actuator = gated("abcd")
    fleet = mining("abcd")
    actuator.submit(commands_for(plan_of(("a", "run", 2000), ("b", "sleep", None),
                                         ("c", "run", 2500), ("d", "run", 2500)), fleet))
    await asyncio.sleep(0)
    assert log == [("b", "stop")], "one worker: the stop first, a, c and d wait"
    # the next round: b is running now; a only cut to 2500, c not at all, d deeper
    later = commands_for(plan_of(("a", "run", 2500), ("d", "run", 1500)), fleet)
    assert actuator.submit(later) == 1, "only d is re-decided"
    gate.set()
    await actuator.drain()
    assert sorted(log[1:]) == [("a", "set_power_limit:2000"), ("c", "set_power_limit:2500"),
                               ("d", "set_power_limit:1500")]


async def test_commands_first_waits_for_stops_and_for_queued_commands() -> None:
    """Fleet reads wait on this: a running cut with no queue does not hold them; a
    running stop does, and so do commands queued for a slot."""
    log, gate, actuator = gated("abcd")
    fleet = mining("abcd")
    await asyncio.wait_for(actuator.commands_first(), 1)  # nothing at all: at once
    actuator.submit(commands_for(plan_of(("a", "run", 2000)), fleet))
    await asyncio.sleep(0)
    await asyncio.wait_for(actuator.commands_first(), 1)  # one cut running, none queued
    actuator.submit(commands_for(plan_of(("b", "run", 2000)), fleet))
    waiter = asyncio.ensure_future(actuator.commands_first())
    await asyncio.sleep(0)
    assert not waiter.done(), "a cut queued for the slot"
    gate.set()
    await asyncio.wait_for(waiter, 1)
    await actuator.drain()
    gate.clear()
    actuator.submit(commands_for(plan_of(("c", "sleep", None)), fleet))
    waiter = asyncio.ensure_future(actuator.commands_first())
    await asyncio.sleep(0)
    assert log[-1] == ("c", "stop") and not waiter.done(), "a running stop holds reads"
    gate.set()
    await asyncio.wait_for(waiter, 1)
    await actuator.drain()


async def test_stops_first_waits_only_while_stops_queue_for_a_slot() -> None:
    """Reads wait unbounded for this: a trip's stops queued for connections. A stop
    already running (perhaps hanging on a dead miner) does not hold it."""
    log, gate, actuator = gated("abc")
    fleet = mining("abc")
    actuator.submit(commands_for(plan_of(("a", "sleep", None)), fleet))
    await asyncio.sleep(0)
    assert log == [("a", "stop")]
    await asyncio.wait_for(actuator.stops_first(), 1)  # running, none queued
    actuator.submit(commands_for(plan_of(("b", "sleep", None), ("c", "sleep", None)), fleet))
    waiter = asyncio.ensure_future(actuator.stops_first())
    await asyncio.sleep(0)
    assert not waiter.done(), "two stops queued behind a"
    gate.set()
    await asyncio.wait_for(waiter, 1)
    await actuator.drain()


async def test_a_newer_plan_takes_over_raises_still_waiting_for_older_sheds() -> None:
    """A raise queued behind an older plan's sheds is re-decided by the next plan at
    once (sent if that plan still wants it), not left out until a third plan."""
    log, gate, actuator = gated("abc", max_concurrency=8)
    fleet = FleetState(0.0, (view("a", MinerStatus.MINING), view("b", MinerStatus.SLEEPING),
                             view("c", MinerStatus.MINING)))
    first = commands_for(plan_of(("a", "sleep", None), ("b", "run", 3000)), fleet)
    assert actuator.submit(first) == 2
    await asyncio.sleep(0)
    assert "b" in actuator.busy_miners
    # the next plan still wants b up (and cuts c): b is part of it, not skipped as busy
    second = commands_for(plan_of(("b", "run", 3000), ("c", "run", 2000)), fleet)
    assert actuator.submit(second) == 2
    gate.set()
    await actuator.drain()
    assert log.count(("b", "resume")) == 1, "sent once, for the newer plan"
    assert actuator.busy_miners == frozenset()


async def test_stopping_watts_are_the_draw_the_stops_under_way_take_off() -> None:
    """The meter wake-up subtracts these: an excess they cover needs no new round.
    Cuts do not count (a round may meet their excess sooner by cutting deeper)."""
    log, gate, actuator = gated("abcd")
    fleet = mining("abcd")  # each reads 3,000 W
    sleep_watts = float(MODEL.sleep_watts)
    the_plan = Plan(0.0, 0.0, 0.0, 0.0, (
        MinerPlan("a", "run", 2000, 2000.0, 0.0, "cut"),
        MinerPlan("b", "sleep", None, sleep_watts, 0.0, "stop"),
        MinerPlan("c", "sleep", None, sleep_watts, 0.0, "stop"),
        MinerPlan("d", "run", 3500, 3500.0, 0.0, "raise"),
    ), ())
    assert actuator.stopping_watts == 0.0
    actuator.submit(commands_for(the_plan, fleet))
    await asyncio.sleep(0)
    assert actuator.stopping_watts == pytest.approx(2 * (3000.0 - sleep_watts))
    gate.set()
    await actuator.drain()
    assert actuator.stopping_watts == 0.0
    assert sorted(m for m, _ in log) == ["a", "b", "c", "d"]


async def test_raises_within_the_headroom_go_with_the_cuts_the_rest_wait() -> None:
    """A raise that fits under the budget with every shed counted as not done yet
    cannot take the draw over it, whenever the sheds land: it need not wait for
    them (thousands of slow cuts starved the resumes under a risen grant)."""
    log, gate, actuator = gated("abc", max_concurrency=8)
    fleet = FleetState(0.0, (view("a", MinerStatus.MINING), view("b", MinerStatus.SLEEPING),
                             view("c", MinerStatus.SLEEPING)))
    work = commands_for(plan_of(("a", "run", 2000), ("b", "run", 3000), ("c", "run", 3000)),
                        fleet)
    raise_watts = {w.miner_id: w.raise_watts for w in work}
    assert raise_watts["b"] == pytest.approx(3000.0 - MODEL.sleep_watts)  # 30 W asleep
    actuator.submit(work, headroom_watts=raise_watts["b"] + 1000.0)  # room for one of two
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert ("a", "set_power_limit:2000") in log
    assert ("b", "set_power_limit:3000") in log or ("b", "resume") in log, "b fits: now"
    assert not [c for m, c in log if m == "c"], "c does not fit: after the cut"
    gate.set()
    await actuator.drain()
    assert ("c", "resume") in log


async def test_without_a_headroom_every_raise_waits_for_the_sheds() -> None:
    log, gate, actuator = gated("ab", max_concurrency=8)
    fleet = FleetState(0.0, (view("a", MinerStatus.MINING), view("b", MinerStatus.SLEEPING)))
    work = commands_for(plan_of(("a", "run", 2000), ("b", "run", 3000)), fleet)
    actuator.submit(work, headroom_watts=-500.0)  # over the budget already
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert log == [("a", "set_power_limit:2000")]
    gate.set()
    await actuator.drain()
    assert ("b", "resume") in log


async def test_no_more_commands_run_at_once_than_max_concurrency() -> None:
    """A bounded pool of workers: a 10-miner plan on 3 workers never has more than 3
    commands with the miners, and every one is carried out."""
    inside = 0
    most = 0
    sent: list[str] = []

    class CountingDriver(FakeDriver):
        async def _cmd(self, kind: CommandKind, watts: int | None = None) -> CommandResult:
            nonlocal inside, most
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0)
            inside -= 1
            sent.append(self.miner_id)
            return CommandResult(self.miner_id, kind, CommandOutcome.OK, 0.01, watts)

    names = "abcdefghij"
    drivers = {m: CountingDriver(m, [], asyncio.Event()) for m in names}
    actuator = Actuator(drivers, ManualClock(), max_concurrency=3, on_result=lambda r: None)
    actuator.submit(commands_for(plan_of(*((m, "run", 2000) for m in names)), mining(names)))
    await actuator.drain()
    assert most == 3
    assert sorted(sent) == list(names)
    assert actuator.busy_miners == frozenset()


def test_max_concurrency_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Actuator({}, ManualClock(), max_concurrency=0, on_result=lambda r: None)
