"""Stopping background tasks without hanging on them."""

from __future__ import annotations

import asyncio
from typing import Any

STOP_TIMEOUT_SECONDS = 5.0


async def cancel_and_wait(task: asyncio.Future[Any],
                          timeout_seconds: float = STOP_TIMEOUT_SECONDS) -> bool:
    """Cancel ``task`` and wait for it, bounded; True when it ended.

    A task holding an ``aiomqtt.Client`` is the case this is for: on cancellation
    the client's ``__aexit__`` waits for the broker's disconnect acknowledgement
    with no timeout, and once in a while (about one `hashgov demo` in five on a
    busy 2-core machine) that wait never ends. A second cancel interrupts it."""
    for _ in range(2):
        task.cancel()
        done, _pending = await asyncio.wait({task}, timeout=timeout_seconds)
        if done:
            if not task.cancelled():
                task.exception()  # retrieved: a failure at exit is not the caller's error
            return True
    return False
