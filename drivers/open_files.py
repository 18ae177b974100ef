"""Open-file descriptors: the limit, and how many miner connections may stay open.

Kept connections (drivers/boser_channel.py) hold a descriptor each for the life of
the process, so they are rationed against RLIMIT_NOFILE, which the service raises
to its hard limit at start (systemd's LimitNOFILE in the unit).
"""

from __future__ import annotations

import contextlib
import resource

import structlog

log = structlog.get_logger("hashgov.drivers")

# File descriptors left for everything else: the fleet poll (max_concurrency
# sockets), LuxOS commands (a connection per call), MQTT, metrics, logs.
RESERVED_OPEN_FILES = 1024


def raise_open_files_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard one (what systemd's LimitNOFILE
    or the shell allows); return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        # refused: keep what we have (fewer kept connections, nothing else changes)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class ConnectionAllowance:
    """How many connections may stay open at once (process-wide: descriptors are)."""

    def __init__(self, limit: int | None = None) -> None:
        self._limit = limit
        self.open_count = 0

    @property
    def limit(self) -> int:
        if self._limit is None:  # on first use: after the service raised RLIMIT_NOFILE
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            self._limit = max(0, soft - RESERVED_OPEN_FILES)
            log.debug("driver.kept_connections_limit", limit=self._limit, open_files=soft)
        return self._limit

    def take(self) -> bool:
        if self.open_count >= self.limit:
            return False
        self.open_count += 1
        return True

    def give_back(self) -> None:
        self.open_count = max(0, self.open_count - 1)


KEPT_CONNECTIONS = ConnectionAllowance()
