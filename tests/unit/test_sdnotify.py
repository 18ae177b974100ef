"""controller.sdnotify against real AF_UNIX datagram sockets (path and abstract)."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.sdnotify import Notifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    try:
        yield sock, str(path)
    finally:
        sock.close()


def _recv(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_messages_over_path_socket_from_environment(
    notify_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    with Notifier() as n:
        assert n.enabled
        assert n.ready()
        assert _recv(sock) == ["READY=1"]
        assert n.ready(status="polling\nfleet")
        assert _recv(sock) == ["READY=1", "STATUS=polling fleet"]
        assert n.status("budget 40 kW, 7 mining")
        assert _recv(sock) == ["STATUS=budget 40 kW, 7 mining"]
        assert n.watchdog()
        assert _recv(sock) == ["WATCHDOG=1"]
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert n.reloading()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        fields = _recv(sock)
        assert fields[0] == "RELOADING=1"
        key, _, usec = fields[1].partition("=")
        assert key == "MONOTONIC_USEC" and before <= int(usec) <= after
        assert n.stopping()
        assert _recv(sock) == ["STOPPING=1"]


def test_abstract_socket() -> None:
    name = f"hashgov-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert _recv(sock) == ["READY=1"]
        n.close()
    finally:
        sock.close()


def test_noop_without_socket() -> None:
    n = Notifier({})
    assert not n.enabled
    assert n.ready() is False
    assert n.watchdog() is False
    assert n.stopping() is False
    assert n.reloading() is False
    assert n.watchdog_interval_seconds() is None


def test_relative_or_odd_address_is_ignored() -> None:
    assert not Notifier({"NOTIFY_SOCKET": "relative/path"}).enabled
    assert not Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


def test_send_failure_never_raises_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    with caplog.at_level(logging.WARNING, logger="controller.sdnotify"):
        assert n.ready() is False
        assert n.watchdog() is False
        assert n.status("x") is False
    failures = [r for r in caplog.records if "sdnotify_send_failed" in r.getMessage()]
    assert len(failures) == 1


def test_recovers_when_socket_appears_later(tmp_path: Path) -> None:
    path = tmp_path / "late.sock"
    n = Notifier({"NOTIFY_SOCKET": str(path)})
    assert n.watchdog() is False
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    try:
        assert n.watchdog() is True
        assert _recv(sock) == ["WATCHDOG=1"]
    finally:
        sock.close()
        n.close()


def test_watchdog_interval() -> None:
    pid = str(os.getpid())
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval_seconds() == 30.0
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}
                    ).watchdog_interval_seconds() == 30.0
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
                    ).watchdog_interval_seconds() is None
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_interval_seconds() is None
    assert Notifier({"WATCHDOG_USEC": "soon"}).watchdog_interval_seconds() is None
    assert Notifier({"WATCHDOG_USEC": "1", "WATCHDOG_PID": "x"}).watchdog_interval_seconds() is None
