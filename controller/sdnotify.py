"""The systemd notify protocol (sd_notify(3)) without a dependency.

``Notifier`` sends ``READY=1``, ``STATUS=…``, ``WATCHDOG=1``, ``STOPPING=1`` and
``RELOADING=1`` datagrams to ``$NOTIFY_SOCKET`` (a filesystem path, or an abstract
socket name written with a leading ``@``). Without ``$NOTIFY_SOCKET`` (not run by
systemd, or run by a unit that is not Type=notify) every call is a no-op.

It never raises: the daemon must not fall over because systemd is away. The first
failed send is logged (once) as ``sdnotify_send_failed``; the rest are dropped
quietly, and every call returns whether its datagram was sent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping

_log = logging.getLogger(__name__)


def _address(raw: str) -> str | bytes | None:
    if not raw:
        return None
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()  # Linux abstract namespace
    if raw.startswith("/"):
        return raw
    return None  # sd_notify ignores anything else (e.g. vsock: not used here)


class Notifier:
    """Talks to systemd's notify socket; silent when there is none."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._env = dict(env)
        self._address = _address(env.get("NOTIFY_SOCKET", ""))
        self._sock: socket.socket | None = None
        self._failed_logged = False

    @property
    def enabled(self) -> bool:
        """True when a notify socket is configured."""
        return self._address is not None

    def send(self, *fields: str) -> bool:
        """Send raw ``KEY=value`` fields in one datagram; True when it was sent."""
        if self._address is None:
            return False
        message = "\n".join(fields).encode()
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(message, self._address)
        except OSError as exc:
            if not self._failed_logged:
                self._failed_logged = True
                _log.warning(
                    "sdnotify_send_failed socket=%s error=%s (further failures not logged)",
                    self._env.get("NOTIFY_SOCKET"), exc,
                )
            self._close_socket()
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        fields = ["READY=1"]
        if status is not None:
            fields.append(f"STATUS={_one_line(status)}")
        return self.send(*fields)

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        fields = ["STOPPING=1"]
        if status is not None:
            fields.append(f"STATUS={_one_line(status)}")
        return self.send(*fields)

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC (needed by Type=notify-reload; harmless otherwise).

        Send ``ready()`` when the reload is done.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def watchdog_interval_seconds(self) -> float | None:
        """systemd's WatchdogSec for this process, or None when no watchdog is armed.

        Ping at about half this interval. WATCHDOG_PID, when set, must be our pid.
        """
        raw = self._env.get("WATCHDOG_USEC")
        if not raw:
            return None
        pid = self._env.get("WATCHDOG_PID")
        if pid:
            try:
                if int(pid) != os.getpid():
                    return None
            except ValueError:
                return None
        try:
            usec = int(raw)
        except ValueError:
            return None
        return usec / 1_000_000 if usec > 0 else None

    def close(self) -> None:
        self._close_socket()

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())
