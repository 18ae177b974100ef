"""Helpers for tests that drive simulated miners: await conditions, not sleeps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]],
    *,
    timeout_seconds: float = 10.0,
    interval_seconds: float = 0.05,
    what: str = "condition",
) -> None:
    """Poll ``predicate`` until it holds; AssertionError naming ``what`` after the deadline."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout_seconds} s")
        await asyncio.sleep(interval_seconds)
