"""FleetPoller: read every miner with bounded concurrency, within one deadline.

A poll never takes longer than ``read_timeout_seconds + slack_seconds``: each
driver enforces its own read timeout, and a miner whose read has not finished
by the poll deadline (it waited too long for a slot) keeps its previous state,
whose ``read_at_seconds`` then shows how old it is. One bad miner (or a driver
that raises, against the contract) never affects the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import structlog

from controller.clock import Clock, SystemClock
from drivers.base import MinerDriver, MinerState

log = structlog.get_logger("hashgov.poller")

NOT_READ_ERROR = "not read yet: poll deadline passed before its turn"


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """Every miner's newest state after one poll."""

    taken_at_seconds: float  # controller monotonic clock, when the poll finished
    states: Mapping[str, MinerState]
    duration_seconds: float = 0.0
    # miners this poll did not reach before its deadline (their state is older)
    missed: frozenset[str] = field(default_factory=frozenset)

    def age_seconds(self, miner_id: str, now_seconds: float) -> float:
        """Seconds since this miner was last read; inf if it never was."""
        state = self.states.get(miner_id)
        if state is None or (not state.reachable and state.error == NOT_READ_ERROR):
            return math.inf
        return max(0.0, now_seconds - state.read_at_seconds)

    @property
    def reachable_count(self) -> int:
        return sum(1 for s in self.states.values() if s.reachable)

    @property
    def unreachable_ids(self) -> tuple[str, ...]:
        return tuple(sorted(k for k, s in self.states.items() if not s.reachable))


class FleetPoller:
    """Reads all drivers; keeps the last snapshot so misses fall back to older reads."""

    def __init__(
        self,
        drivers: Mapping[str, MinerDriver],
        *,
        max_concurrency: int,
        read_timeout_seconds: float,
        clock: Clock | None = None,
        slack_seconds: float = 0.5,
        yield_to: Callable[[], Awaitable[None]] | None = None,
        defer_to: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``yield_to``: awaited before each read (the daemon passes the actuator's
        ``stops_first``: while a trip's stops queue for connections, no read
        starts). ``defer_to``: awaited too, in the first half of each poll only (the
        daemon passes ``commands_first``: reads give way to running stops and to
        queued commands, yet always get half of every poll, so a stop that hangs on
        a dead miner cannot starve them). Waits count against the poll's deadline;
        reads they cost rotate to the front of the next poll."""
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self._drivers = dict(drivers)
        self._max_concurrency = max_concurrency
        self._deadline_seconds = read_timeout_seconds + slack_seconds
        self._clock: Clock = clock or SystemClock()
        self._last: FleetSnapshot | None = None
        self._resume_at = 0  # inventory index the next poll starts at
        self._yield_to = yield_to
        self._defer_to = defer_to

    @property
    def last(self) -> FleetSnapshot | None:
        return self._last

    @property
    def deadline_seconds(self) -> float:
        return self._deadline_seconds

    def set_drivers(self, drivers: Mapping[str, MinerDriver]) -> None:
        """Swap the fleet (config reload); states of removed miners drop out next poll."""
        self._drivers = dict(drivers)

    async def _read_one(self, miner_id: str, driver: MinerDriver) -> MinerState:
        try:
            return await driver.read_state()
        except Exception as exc:  # a driver must not raise; if one does, contain it
            return MinerState(
                miner_id=miner_id,
                reachable=False,
                read_at_seconds=self._clock.monotonic(),
                error=f"driver raised {type(exc).__name__}",
            )

    async def _give_way(self, loop: asyncio.AbstractEventLoop, defer_until: float) -> None:
        if self._yield_to is not None:
            await self._yield_to()
        remaining = defer_until - loop.time()
        if self._defer_to is not None and remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._defer_to(), remaining)

    async def poll(self) -> FleetSnapshot:
        started = self._clock.monotonic()
        drivers = self._drivers
        # Start where the last poll ran out of time: under overload the same tail of the
        # inventory would otherwise never be read. Without misses, inventory order.
        items = list(drivers.items())
        start = self._resume_at % len(items) if items else 0
        order = items[start:] + items[:start]
        queue = list(reversed(order))  # pop() from the end
        fresh: dict[str, MinerState] = {}

        loop = asyncio.get_running_loop()
        defer_until = loop.time() + self._deadline_seconds / 2

        async def worker() -> None:
            while queue:
                await self._give_way(loop, defer_until)
                if not queue:
                    break
                miner_id, driver = queue.pop()
                fresh[miner_id] = await self._read_one(miner_id, driver)

        workers = min(self._max_concurrency, len(queue))
        try:
            async with asyncio.timeout(self._deadline_seconds):
                await asyncio.gather(*(worker() for _ in range(workers)))
        except TimeoutError:
            pass  # in-flight and queued reads are abandoned; their older state stands

        first_missed = next((i for i, (m, _) in enumerate(order) if m not in fresh), None)
        self._resume_at = 0 if first_missed is None else (start + first_missed) % len(items)
        previous = self._last.states if self._last is not None else {}
        states: dict[str, MinerState] = {}
        missed: set[str] = set()
        now = self._clock.monotonic()
        for miner_id in drivers:
            state = fresh.get(miner_id)
            if state is None:
                missed.add(miner_id)
                state = previous.get(miner_id) or MinerState(
                    miner_id=miner_id, reachable=False, read_at_seconds=now, error=NOT_READ_ERROR
                )
            states[miner_id] = state
        snapshot = FleetSnapshot(
            taken_at_seconds=now,
            states=states,
            duration_seconds=now - started,
            missed=frozenset(missed),
        )
        self._last = snapshot
        if missed:
            log.warning("poller.deadline_missed", missed=len(missed), miners=len(drivers))
        return snapshot
