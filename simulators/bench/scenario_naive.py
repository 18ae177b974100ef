"""The naive baseline: whole miners on/off at full power, on a threshold, every 60 s.

What a site without hashgov typically runs: a loop that every ``period``
(simulated seconds; period / K real seconds) takes the last grant it heard,
and keeps the first n miners (inventory order) running at full power, where n
is the most whose full draw plus the sleep draw of the rest stays under
grant − threshold. It never throttles, has no fail-safe on stale telemetry
and drives the same simulated miners through the same pyasic driver layer
(drivers.pyasic_driver) as hashgov.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from controller.clock import SystemClock
from controller.config import HashgovConfig
from controller.service import default_driver_factory
from drivers.base import CommandResult, MinerDriver, close_drivers
from simulators.bench.scenario_spec import Scenario

MAX_CONCURRENCY = 128


def naive_count(
    full_watts: list[float], sleep_watts: list[float], budget_watts: float, threshold_watts: float
) -> int:
    """How many miners (in order) may run at full power within budget − threshold."""
    room = budget_watts - threshold_watts - sum(sleep_watts)
    n = 0
    for full, sleep in zip(full_watts, sleep_watts, strict=True):
        extra = full - sleep
        if extra > room:
            break
        room -= extra
        n += 1
    return n


class NaiveController:
    def __init__(
        self, config: HashgovConfig, sc: Scenario, budget: Callable[[], float | None]
    ) -> None:
        self.drivers: dict[str, MinerDriver] = dict(default_driver_factory(config, SystemClock()))
        self.order = [m.miner_id for m in config.fleet.miners]
        models = [config.fleet.model_for(m) for m in config.fleet.miners]
        self.full = [float(m.max_target_watts) for m in models]
        self.sleep = [float(m.sleep_watts) for m in models]
        self.period_real_s = sc.baseline_period_s / sc.time_scale
        self.threshold_watts = sc.baseline_threshold_frac * sum(self.full)
        self.budget = budget
        self.believed_on = [True] * len(self.order)  # simulated miners start mining
        self.commands = 0

    async def _send(self, sem: asyncio.Semaphore, index: int, on: bool) -> None:
        driver = self.drivers[self.order[index]]
        async with sem:
            result: CommandResult = await (driver.resume() if on else driver.stop())
        self.commands += 1
        if result.ok:
            self.believed_on[index] = on

    async def step(self) -> None:
        budget = self.budget()
        if budget is None:
            return
        n = naive_count(self.full, self.sleep, budget, self.threshold_watts)
        sem = asyncio.Semaphore(MAX_CONCURRENCY)
        work = [
            self._send(sem, i, i < n)
            for i in range(len(self.order))
            if self.believed_on[i] != (i < n)
        ]
        with contextlib.suppress(Exception):
            await asyncio.gather(*work)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                started = loop.time()
                await self.step()
                await asyncio.sleep(max(0.0, self.period_real_s - (loop.time() - started)))
        finally:  # cancelled at the end of the run: close the connections kept to miners
            await close_drivers(self.drivers.values())
