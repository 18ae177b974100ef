"""Daemon operations: systemd notify, SIGHUP reload, broker restart, garbage
telemetry, operator commands and the status message — all against real
mosquitto and simulated miners."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiomqtt

from controller.config import EX_CONFIG
from controller.sdnotify import Notifier
from simulators.miners.testing import eventually
from simulators.site import SURPLUS_TOPIC, SiteTiming
from tests.support.site import running_site

ROOT = Path(__file__).resolve().parents[2]


def notify_socket(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    return sock, path


def drain(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


async def test_systemd_notify_ready_watchdog_status_stopping(tmp_path: Path) -> None:
    sock, path = notify_socket(tmp_path)
    notifier = Notifier(environ={"NOTIFY_SOCKET": path})
    messages: list[str] = []
    async with running_site(tmp_path, base_ip="127.21.0.1", surplus_kw=8.0, notifier=notifier) as site:
        await eventually(lambda: site.service.decisions >= 3, timeout_seconds=10, what="decisions")
        await asyncio.sleep(1.2)  # let the status publisher send a STATUS line
        messages += drain(sock)
        ready = [m for m in messages if "READY=1" in m]
        assert ready, messages
        assert any("WATCHDOG=1" in m for m in messages)
        assert any(m.startswith("STATUS=") and "budget" in m for m in messages), messages
        # READY only after the first fleet read: the tracker already knows every miner
        assert site.service.loop.fleet_read.is_set()
    await asyncio.sleep(0)
    messages += drain(sock)
    assert any("STOPPING=1" in m for m in messages)
    sock.close()


async def test_sighup_reload_good_and_bad_config(tmp_path: Path) -> None:
    async with running_site(tmp_path, base_ip="127.21.1.1", surplus_kw=30.0) as site:
        original = site.config_path.read_text()
        # a good change: a lower grant cap takes effect after SIGHUP
        site.config_path.write_text(original.replace("grant_cap_kw = 100.0", "grant_cap_kw = 6.0"))
        os.kill(os.getpid(), signal.SIGHUP)
        await eventually(lambda: site.service.config.site.grant_cap_kw == 6.0, timeout_seconds=5, what="reload")
        await eventually(lambda: site.true_watts() <= 6_000, timeout_seconds=15, what="draw under new cap")
        # a bad change is refused and the running config kept
        site.config_path.write_text(original.replace("grant_cap_kw = 100.0", "grant_cap_kw = -1"))
        assert site.service.reload() is False
        assert site.service.config.site.grant_cap_kw == 6.0
        assert not site.service_task.done()


async def test_broker_restart_reconnects_and_never_raises_budget(tmp_path: Path) -> None:
    timing = SiteTiming(stale_after_seconds=3.0, grace_seconds=2.0)
    async with running_site(tmp_path, base_ip="127.21.2.1", surplus_kw=12.0, timing=timing) as site:
        await eventually(lambda: site.service.loop.last is not None and site.service.loop.last.budget.watts == 12_000,
                         timeout_seconds=10, what="budget 12 kW")
        budgets: list[float] = []
        connects_before = site.service.link.connect_count
        await site.broker.kill()
        for _ in range(30):  # 3 s without a broker: budget held, never raised
            await asyncio.sleep(0.1)
            if site.service.loop.last is not None:
                budgets.append(site.service.loop.last.capped_budget_watts)
        assert max(budgets) <= 12_000
        site.feeder.surplus_kw = 15.0
        await site.broker.restart()
        await eventually(lambda: site.service.link.connect_count > connects_before, timeout_seconds=15, what="reconnect")
        await eventually(lambda: site.service.loop.last is not None and site.service.loop.last.budget.watts == 15_000,
                         timeout_seconds=15, what="telemetry after resubscribe")


async def test_garbage_payloads_are_rejected_counted_and_harmless(tmp_path: Path) -> None:
    async with running_site(tmp_path, base_ip="127.21.3.1", surplus_kw=9.0) as site:
        await eventually(lambda: site.service.loop.last is not None and site.service.loop.last.budget.watts == 9_000,
                         timeout_seconds=10, what="budget")
        site.feeder.publishing = False
        garbage = [b"NaN", b'{"surplus_kw": "lots"}', b'{"surplus_kw": 1e12, "ts": 1}', b"{", b'{"surplus_kw": Infinity}']
        async with aiomqtt.Client(site.broker.host, site.broker.port, identifier="garbage") as client:
            for payload in garbage * 20:
                await client.publish(SURPLUS_TOPIC, payload, qos=1)
        await eventually(lambda: site.service.store.rejected_total("surplus") >= len(garbage) * 20,
                         timeout_seconds=10, what="rejections counted")
        last = site.service.loop.last
        assert last is not None and last.capped_budget_watts <= 9_000
        assert not site.service_task.done()


async def test_operator_commands_and_status_message(tmp_path: Path) -> None:
    async with running_site(tmp_path, base_ip="127.21.4.1", surplus_kw=30.0) as site:
        host, port = site.broker.host, site.broker.port
        async with aiomqtt.Client(host, port, identifier="operator") as client:
            await client.subscribe("hashgov/reply/#")
            await client.publish("hashgov/command", json.dumps({"id": "cap1", "command": "set_cap", "cap_kw": 5}))
            await client.publish("hashgov/command", b"garbage")
            replies: dict[str, dict[str, object]] = {}
            async with asyncio.timeout(10):
                async for message in client.messages:
                    replies[str(message.topic)] = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                    if len(replies) == 2:
                        break
        assert replies["hashgov/reply/cap1"]["ok"] is True
        assert replies["hashgov/reply/invalid"]["ok"] is False
        await eventually(lambda: site.true_watts() <= 5_000, timeout_seconds=15, what="operator cap obeyed")
        assert json.loads((tmp_path / "state" / "operator.json").read_text())["cap_watts"] == 5_000

        # `hashgov status --json` reads the retained status message
        await eventually(
            lambda: (site.service.last_status or {}).get("cap_watts") == 5_000, timeout_seconds=5, what="status"
        )
        def status() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "controller.cli", "status", "--config", str(site.config_path), "--json"],
                capture_output=True, text=True, cwd=ROOT, timeout=30,
            )

        result = await asyncio.to_thread(status)
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout.strip().splitlines()[-1])
        assert doc["state"] == "online" and doc["cap_watts"] == 5_000
        assert doc["miners"]["mining"] + doc["miners"]["sleeping"] + doc["miners"]["booting"] == 6


def test_run_with_bad_config_exits_78_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text((ROOT / "deploy" / "hashgov.example.toml").read_text().replace("grant_cap_kw = 40.0", "grant_cap_kw = -4"))
    result = subprocess.run(
        [sys.executable, "-m", "controller.cli", "run", "--config", str(bad)], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == EX_CONFIG
    assert "site.grant_cap_kw" in result.stderr and "-4" in result.stderr
