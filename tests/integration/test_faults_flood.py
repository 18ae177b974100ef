"""Telemetry flood against the live daemon: thousands of messages per second on the
surplus topic, half of them garbage, for a few seconds. The control loop keeps its
period, every garbage sample received is rejected and counted, the budget is never
raised, the daemon stays up."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from pathlib import Path

import aiomqtt

from simulators.miners.testing import eventually
from simulators.site import SURPLUS_TOPIC, SiteTiming
from tests.support.site import running_site

FLOOD_SECONDS = 3.0
RATE_PER_SECOND = 2_000
GARBAGE = [b"NaN", b'{"surplus_kw": "lots"}', b"{", b'{"surplus_kw": 1e12}', b"\xff\xfe"]


def flood(host: str, port: int, surplus_kw: float, sent: dict[str, int]) -> None:
    """Publish from another thread (its own loop), as a separate client would."""

    async def run() -> None:
        async with aiomqtt.Client(host, port, identifier="flood", max_queued_outgoing_messages=0) as c:
            start = time.monotonic()
            i = 0
            while time.monotonic() - start < FLOOD_SECONDS:
                for _ in range(20):
                    if i % 2:
                        payload = GARBAGE[i % len(GARBAGE)]
                        sent["garbage"] += 1
                    else:
                        payload = json.dumps({"surplus_kw": surplus_kw, "ts": time.time()}).encode()
                        sent["valid"] += 1
                    await c.publish(SURPLUS_TOPIC, payload, qos=0)
                    i += 1
                target = start + i / RATE_PER_SECOND
                await asyncio.sleep(max(0.0, target - time.monotonic()))

    asyncio.run(run())


async def test_flood_keeps_the_period_and_counts_rejections(tmp_path: Path) -> None:
    timing = SiteTiming(control_period_seconds=1.0)
    async with running_site(tmp_path, base_ip="127.34.0.1", surplus_kw=12.0, timing=timing) as site:
        service = site.service
        await eventually(lambda: service.loop.last is not None
                         and service.loop.last.budget.watts == 12_000,
                         timeout_seconds=10, what="budget 12 kW")
        rejected_before = service.store.rejected_total("surplus")
        received_before = service.link.messages_received
        sent = {"garbage": 0, "valid": 0}
        thread = threading.Thread(target=flood, args=(site.broker.host, site.broker.port, 12.0, sent))
        iterations: list[float] = []
        budgets: list[float] = []
        thread.start()
        t0 = time.monotonic()
        while thread.is_alive() or time.monotonic() - t0 < FLOOD_SECONDS:
            d = service.loop.last
            if d is not None and (not iterations or d.at_seconds != iterations[-1]):
                iterations.append(d.at_seconds)
                budgets.append(d.capped_budget_watts)
            await asyncio.sleep(0.01)
        thread.join()
        elapsed = time.monotonic() - t0
        received = service.link.messages_received - received_before
        rate = (sent["garbage"] + sent["valid"]) / elapsed
        gaps = [b - a for a, b in itertools.pairwise(iterations)]
        print(f"FIGURE flood_rate_per_s={rate:.0f} sent={sent} received={received} "
              f"iterations={len(iterations)} max_gap_s={max(gaps):.3f} elapsed_s={elapsed:.2f}")
        assert rate >= 1_000, f"the flood was only {rate:.0f} msg/s"
        assert max(gaps) <= timing.control_period_seconds + 0.5, gaps
        assert len(iterations) >= FLOOD_SECONDS / timing.control_period_seconds - 1
        # the loop does not turn the flood into a planning flood: iterations stay bounded
        # by the period and the urgent wakes of the 10 Hz site meter, not the flood rate
        assert len(iterations) <= elapsed * (10 + 1 / timing.control_period_seconds) + 2
        assert max(budgets) <= 12_000
        # every garbage sample that reached the daemon was rejected and counted
        await eventually(
            lambda: service.store.rejected_total("surplus") - rejected_before
            >= 0.95 * sent["garbage"],
            timeout_seconds=10, what="rejections counted",
        )
        assert not site.service_task.done()
