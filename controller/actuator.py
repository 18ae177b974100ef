"""The actuator: turns the difference between a Plan and the fleet into driver calls.

Sheds go first and are never queued behind raises: each new plan's sheds start
at once, while raises of a superseded plan that have not started are dropped.
A bounded pool of workers carries the commands out, taking waiting stops first,
then cuts, then raises (``controller/command_queue.py``). A stop is sent at once
and read back later, once no stop or cut waits: a trip's draw falls as its stops
land, and reading each back before sending the next had cost ~40 % of the time
the draw stayed over the grant.
Commands to one miner run in order (set the target, then resume); different
miners run concurrently, one per worker. A miner whose command failed is backed
off rather than hammered every control period.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog

from controller.clock import Clock
from controller.command_queue import (
    PRIORITY_CUT,
    PRIORITY_RAISE,
    PRIORITY_STOP,
    PRIORITY_STOP_READBACK,
    CommandQueue,
    Tally,
    Ticket,
)
from controller.fleet import FleetState, MinerView
from controller.policy import Plan
from drivers.base import CommandKind, CommandOutcome, CommandResult, MinerDriver, Readback

log = structlog.get_logger("hashgov.actuator")

# Backoff after a failed command to one miner: first, then doubling up to the cap.
RETRY_BACKOFF_SECONDS = 5.0
RETRY_BACKOFF_CAP_SECONDS = 120.0


@dataclass(frozen=True, slots=True)
class Command:
    miner_id: str
    kind: CommandKind
    watts: int | None = None


@dataclass(frozen=True, slots=True)
class MinerCommands:
    """What one miner must do to follow the plan, in order; sheds lower its draw."""

    miner_id: str
    steps: tuple[Command, ...]
    sheds: bool
    pending_watts: float | None = None  # the draw a raise may lead to while in flight
    shed_watts: float = 0.0  # the draw a shed takes off once carried out (0 for a raise)
    raise_watts: float = 0.0  # the draw a raise may add to what the fleet is assumed at


def commands_for(plan: Plan, fleet: FleetState) -> list[MinerCommands]:
    """The commands that move the fleet from its state to the plan."""
    views = fleet.by_id()
    out: list[MinerCommands] = []
    for mp in plan.miners:
        view = views.get(mp.miner_id)
        if view is None or mp.action == "leave" or not view.controllable:
            continue
        steps = _steps(view, mp.action, mp.target_watts)
        if not steps:
            continue
        assumed = view.assumed_watts
        if _sheds(view, mp.action, mp.target_watts):
            shed = max(0.0, assumed - mp.planned_watts)
            out.append(MinerCommands(mp.miner_id, steps, True, shed_watts=shed))
        else:
            pending = _raise_target_watts(steps, view.model.max_target_watts)
            out.append(MinerCommands(mp.miner_id, steps, False, pending,
                                     raise_watts=max(0.0, pending - assumed)))
    return out


def _steps(view: MinerView, action: str, target_watts: int | None) -> tuple[Command, ...]:
    mid = view.miner_id
    if action == "sleep":
        return (Command(mid, CommandKind.STOP),) if view.is_on else ()
    if action != "run":
        return ()
    target = target_watts if target_watts is not None else view.model.max_target_watts
    set_limit = Command(mid, CommandKind.SET_POWER_LIMIT, target)
    if not view.is_on:
        # set the target first so the miner boots straight to it
        first = (set_limit,) if view.power_limit_watts != target else ()
        return (*first, Command(mid, CommandKind.RESUME))
    return (set_limit,) if view.power_limit_watts != target else ()


def _sheds(view: MinerView, action: str, target_watts: int | None) -> bool:
    return action == "sleep" or view.is_cut_by(target_watts)


def _heads_to_watts(work: MinerCommands) -> float:
    """The power level a miner's commands take it to (a stop: 0, below any target)."""
    level = float("inf")
    for step in work.steps:
        if step.kind is CommandKind.STOP:
            return 0.0
        if step.kind is CommandKind.SET_POWER_LIMIT and step.watts is not None:
            level = float(step.watts)
    return level


def _priority(work: MinerCommands) -> int:
    """Stops first, then cuts, then raises (see controller/command_queue.py)."""
    if not work.sheds:
        return PRIORITY_RAISE
    stops = any(step.kind is CommandKind.STOP for step in work.steps)
    return PRIORITY_STOP if stops else PRIORITY_CUT


ResultSink = Callable[[CommandResult], None]
_R = TypeVar("_R")


def _carry_out(driver: MinerDriver, cmd: Command) -> Awaitable[CommandResult]:
    """The driver call for one command, verified by readback before it returns."""
    if cmd.kind is CommandKind.STOP:
        return driver.stop()
    if cmd.kind is CommandKind.RESUME:
        return driver.resume()
    assert cmd.watts is not None
    return driver.set_power_limit(cmd.watts)


@dataclass(slots=True)
class _Wave:
    """One plan's sheds still to finish, and the raises that wait for them."""

    generation: int
    sheds_left: int
    raises: list[MinerCommands]


def _raises_within(
    raises: list[MinerCommands], headroom_watts: float | None
) -> tuple[list[MinerCommands], list[MinerCommands]]:
    """(the raises that fit in the headroom, in the plan's order; the rest)."""
    if headroom_watts is None:
        return [], raises
    room = headroom_watts
    fitting: list[MinerCommands] = []
    waiting: list[MinerCommands] = []
    for w in raises:
        if w.raise_watts <= room:
            room -= w.raise_watts
            fitting.append(w)
        else:
            waiting.append(w)
    return fitting, waiting


@dataclass(frozen=True, slots=True)
class _Job:
    work: MinerCommands
    priority: int
    wave: _Wave | None  # the wave this shed counts down; None for a raise
    readback: Readback | None = None  # a stop sent and accepted, still to verify


class CommandObserver(Protocol):
    """Told when a miner's commands start and finish (the tracker assumes the
    higher draw while a raise is in flight, so the meter check sees no phantom gap)."""

    def commands_started(self, miner_id: str, pending_watts: float) -> None: ...

    def commands_finished(self, miner_id: str) -> None: ...


def _raise_target_watts(steps: tuple[Command, ...], max_target_watts: int) -> float:
    """The draw a miner may head for while a raise's commands run."""
    targets = [
        s.watts for s in steps if s.kind is CommandKind.SET_POWER_LIMIT and s.watts is not None
    ]
    return float(max(targets)) if targets else float(max_target_watts)


class Actuator:
    def __init__(
        self,
        drivers: Mapping[str, MinerDriver],
        clock: Clock,
        *,
        max_concurrency: int,
        on_result: ResultSink,
        observer: CommandObserver | None = None,
        dry_run: bool = False,
    ) -> None:
        self._observer = observer
        self._drivers = drivers
        self._clock = clock
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self._queue: CommandQueue[_Job] = CommandQueue()
        self._max_workers = max_concurrency
        self._workers = 0
        self._on_result = on_result
        self.dry_run = dry_run
        self._generation = 0
        self._in_flight: set[str] = set()
        # miner -> generation of the plan whose raise wave it waits in (not started yet)
        self._queued_raises: dict[str, int] = {}
        # miner -> its job in the queue, not taken by a worker yet
        self._queued_jobs: dict[str, Ticket[_Job]] = {}
        self._backoff_until: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.would_send: list[Command] = []  # shadow mode: the last plan's commands
        self._stops = Tally()  # stops queued or in flight (see commands_first)
        self._stop_watts = 0.0  # the draw they take off once carried out

    def set_drivers(self, drivers: Mapping[str, MinerDriver]) -> None:
        self._drivers = drivers

    @property
    def busy_miners(self) -> frozenset[str]:
        return frozenset(self._in_flight)

    @property
    def stopping_watts(self) -> float:
        """How far the stops queued or in flight take the draw down (see the meter
        wake-up in controller/control.py). A stop counts until read back: the meter
        sees a stop land only as the miner's draw ramps down."""
        return self._stop_watts if self._stops.count > 0 else 0.0

    async def stops_first(self) -> None:
        """Return once no stop waits for a worker. Fleet reads wait for this: on a
        trip every connection the miners and this host can serve should go to the
        stops; a read can wait a second, the draw over the grant cannot."""
        await self._queue.backlog_cleared(PRIORITY_STOP)

    async def commands_first(self) -> None:
        """Return once no stop is queued or in flight and no command waits for a
        worker. Fleet reads wait for this too, for part of each poll only (see
        FleetPoller): the wake-ups after a trip go first as well, but a stop that
        hangs on a dead miner must not hold every read."""
        while self._stops.count > 0 or self._queue.waiting > 0:
            await self._stops.zero()
            await self._queue.backlog_cleared()

    def submit(self, work: Sequence[MinerCommands], headroom_watts: float | None = None) -> int:
        """Start a plan's commands: sheds now, raises after every shed of this plan
        finished (unless a newer plan superseded them). Returns commands started.

        ``headroom_watts``: how far the fleet's assumed draw (every shed counted as
        not done yet) is under the budget. Raises that fit in it, in the plan's order,
        cannot take the draw over the budget whenever the sheds land, so they go now
        with the cuts; only the rest waits for the sheds. (At 10,000 miners a plan's
        thousands of cuts took ~100 s, and the resumes behind them starved while the
        draw was megawatts under a risen grant.)"""
        self._generation += 1
        generation = self._generation
        # raises still waiting for an older plan's sheds: this plan decides them now.
        # (Kept busy, they were left out of this plan and waited for the next one; on
        # a busy site every plan has sheds, and the raises after a trip starved.)
        for miner_id in list(self._queued_raises):
            del self._queued_raises[miner_id]
            self._finished(miner_id)
        self._withdraw_stale_jobs(work)
        now = self._clock.monotonic()
        ready = [
            w
            for w in work
            if w.miner_id not in self._in_flight and self._backoff_until.get(w.miner_id, 0.0) <= now
        ]
        if self.dry_run:
            self.would_send = [step for w in ready for step in w.steps]
            return 0
        sheds = [w for w in ready if w.sheds]
        raises = [w for w in ready if not w.sheds]
        for w in ready:
            self._in_flight.add(w.miner_id)
            if self._observer is not None and w.pending_watts is not None:
                self._observer.commands_started(w.miner_id, w.pending_watts)
        raise_now, raises = _raises_within(raises, headroom_watts)
        wave = _Wave(generation, len(sheds), raises)
        for w in sheds:
            self._enqueue(w, _priority(w), wave)
        for w in raise_now:
            self._enqueue(w, PRIORITY_CUT, None)
        for w in raises:
            self._queued_raises[w.miner_id] = generation
        if not sheds:
            self._release_raises(wave)
        return len(ready)

    def _withdraw_stale_jobs(self, work: Sequence[MinerCommands]) -> None:
        """Jobs no worker has taken yet are partly this plan's to decide, like the
        waiting raises. A queued raise goes unless this plan asks for it again (one
        queued before a drop must not run after it). A queued shed stays, unless this
        plan sheds that miner deeper (a stop for a queued cut): a fast shed's stops
        hold until carried out, even when the next round would only cut. At 10,000
        miners cuts queued for a minute, and a drop's stops skipped every miner still
        queued for one (it was busy)."""
        if not self._queued_jobs:
            return
        wanted = {w.miner_id: w for w in work}
        for miner_id, ticket in list(self._queued_jobs.items()):
            queued = ticket.job.work
            new = wanted.get(miner_id)
            if new is not None and new.steps == queued.steps:
                continue  # asked again: keep its place
            if queued.sheds and not (
                new is not None and new.sheds and _heads_to_watts(new) < _heads_to_watts(queued)
            ):
                continue
            del self._queued_jobs[miner_id]
            if self._queue.cancel(ticket):
                self._job_done(ticket.job)

    def _enqueue(self, work: MinerCommands, priority: int, wave: _Wave | None) -> None:
        if priority == PRIORITY_STOP:
            self._stops.add(+1)
            self._stop_watts += work.shed_watts
        self._queued_jobs[work.miner_id] = self._queue.put(priority, _Job(work, priority, wave))
        if self._workers < self._max_workers:
            self._workers += 1
            self._spawn(self._worker())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _release_raises(self, wave: _Wave) -> None:
        """This wave's sheds are done: its raises go, unless a newer plan took them."""
        for w in wave.raises:
            if self._queued_raises.get(w.miner_id) == wave.generation:
                del self._queued_raises[w.miner_id]
                self._enqueue(w, PRIORITY_RAISE, None)

    async def _worker(self) -> None:
        """Carry out queued jobs, most urgent first, until none is left."""
        try:
            while (job := self._queue.take()) is not None:
                self._queued_jobs.pop(job.work.miner_id, None)
                try:
                    await self._run(job)
                except Exception as exc:  # one miner's problem must not stop the worker
                    log.error("actuator_job_failed", miner=job.work.miner_id, error=repr(exc))
        finally:
            self._workers -= 1

    async def _run(self, job: _Job) -> None:
        readback: Readback | None = None
        try:
            if job.readback is not None:
                self._record(await self._guarded(job.work.steps[0], job.readback))
            elif job.priority == PRIORITY_STOP and len(job.work.steps) == 1:
                readback = await self._send_stop(job.work.steps[0])
            else:
                await self._run_steps(job.work.steps)
        finally:
            if readback is not None:  # the miner stays busy until its stop is verified
                self._queue.put(PRIORITY_STOP_READBACK, dataclasses.replace(job, readback=readback))
            else:
                self._job_done(job)

    async def _run_steps(self, steps: tuple[Command, ...]) -> None:
        for step in steps:
            result = await self._send(step)
            self._record(result)
            if not result.ok and result.outcome is not CommandOutcome.UNVERIFIED:
                break  # do not resume a miner whose target could not be set, etc.

    async def _send_stop(self, cmd: Command) -> Readback | None:
        """Send a stop: its readback, left for later; None when it failed (recorded)."""
        sent = await self._call_driver(cmd, lambda driver: driver.send_stop())
        if isinstance(sent, CommandResult):
            self._record(sent)
            return None
        return sent

    def _job_done(self, job: _Job) -> None:
        """A job carried out or withdrawn: the miner is free, its wave one shed nearer."""
        if job.priority == PRIORITY_STOP:
            self._stops.add(-1)
            # float sums drift: no stop left is exactly none
            self._stop_watts = self._stop_watts - job.work.shed_watts if self._stops.count else 0.0
        self._finished(job.work.miner_id)
        wave = job.wave
        if wave is not None:
            wave.sheds_left -= 1
            if wave.sheds_left == 0:
                self._release_raises(wave)

    def _finished(self, miner_id: str) -> None:
        self._in_flight.discard(miner_id)
        if self._observer is not None:
            self._observer.commands_finished(miner_id)

    async def _send(self, cmd: Command) -> CommandResult:
        return await self._call_driver(cmd, lambda driver: _carry_out(driver, cmd))

    async def _call_driver(
        self, cmd: Command, call: Callable[[MinerDriver], Awaitable[_R]]
    ) -> _R | CommandResult:
        """``call`` on the command's miner's driver; no driver is an ERROR result."""
        driver = self._drivers.get(cmd.miner_id)
        if driver is None:
            return CommandResult(
                cmd.miner_id, cmd.kind, CommandOutcome.ERROR, 0.0, cmd.watts, "no driver"
            )
        return await self._guarded(cmd, lambda: call(driver))

    async def _guarded(self, cmd: Command, call: Callable[[], Awaitable[_R]]) -> _R | CommandResult:
        """Drivers must not raise; if one does, it is one miner's problem (an ERROR)."""
        try:
            return await call()
        except Exception as exc:
            log.error("driver_raised", miner=cmd.miner_id, kind=str(cmd.kind), error=repr(exc))
            return CommandResult(
                cmd.miner_id, cmd.kind, CommandOutcome.ERROR, 0.0, cmd.watts, "driver raised"
            )

    def _record(self, result: CommandResult) -> None:
        mid = result.miner_id
        if result.ok or result.outcome is CommandOutcome.UNVERIFIED:
            self._failures.pop(mid, None)
            self._backoff_until.pop(mid, None)
        else:
            n = self._failures.get(mid, 0) + 1
            self._failures[mid] = n
            delay = min(RETRY_BACKOFF_SECONDS * 2 ** (n - 1), RETRY_BACKOFF_CAP_SECONDS)
            self._backoff_until[mid] = self._clock.monotonic() + delay
        log.info(
            "command",
            miner=mid,
            kind=str(result.kind),
            outcome=str(result.outcome),
            watts=result.requested_watts,
            latency_s=round(result.latency_seconds, 3),
            detail=result.detail or None,
        )
        self._on_result(result)

    async def drain(self) -> None:
        """Wait for every command in flight (used on shutdown and in tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def stop_all(self, miner_ids: Sequence[str]) -> list[CommandResult]:
        """Sleep the given miners (shutdown with on_shutdown = "sleep")."""
        results = await asyncio.gather(
            *(self._send(Command(m, CommandKind.STOP)) for m in miner_ids)
        )
        for r in results:
            self._record(r)
        return list(results)
