"""Task supervision: a failing task is restarted with backoff; a crash loop ends
the daemon (systemd restarts it clean)."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from controller.clock import ManualClock
from controller.service import MAX_CRASHES_IN_WINDOW, CrashLoop, Service


async def drive(clock: ManualClock, task: asyncio.Task[None], step_seconds: float = 0.5) -> None:
    """Move the manual clock until the task ends (bounded)."""
    for _ in range(2_000):
        if task.done():
            return
        await asyncio.sleep(0)
        clock.advance(step_seconds)
    raise AssertionError("task did not finish")


async def test_failing_task_is_restarted_with_growing_backoff(tmp_path: Path) -> None:
    clock = ManualClock()
    service = Service(tmp_path / "unused.toml", clock=clock)
    starts: list[float] = []

    async def flaky() -> None:
        starts.append(clock.monotonic())
        if len(starts) < 3:
            raise RuntimeError("boom")

    task = asyncio.ensure_future(service._supervise("flaky", flaky))
    await drive(clock, task)
    await task  # returned normally after two restarts
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) == 3
    assert gaps[0] >= 1.0 and gaps[1] >= 2.0, gaps  # 1 s, then 2 s


async def test_crash_loop_raises_to_end_the_daemon(tmp_path: Path) -> None:
    clock = ManualClock()
    service = Service(tmp_path / "unused.toml", clock=clock)
    calls = 0

    async def always_fails() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("still broken")

    task = asyncio.ensure_future(service._supervise("broken", always_fails))
    await drive(clock, task)
    with pytest.raises(CrashLoop, match="broken failed"):
        await task
    assert calls == MAX_CRASHES_IN_WINDOW


async def test_bad_config_at_start_returns_78(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[site]\ngrant_cap_kw = 0\n")
    assert await Service(bad).run() == 78
