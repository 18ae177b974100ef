"""SIGKILL mid-ramp and restart: the daemon runs as a real subprocess
(`python -m controller.cli run --config ...`) against mosquitto and a SimFleet in
the test process.

Proves: operator overrides set before the kill survive (state_dir/operator.json,
written atomically; a torn temp file left behind is ignored); the restarted
daemon reads the fleet before acting and raises from the fleet's present draw at
the ramp rate — it does not wake the whole fleet at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiomqtt

from simulators.broker import MosquittoBroker
from simulators.miners.fleet import SimFleet, make_specs
from simulators.miners.testing import eventually
from simulators.site import SiteTiming, site_config_text
from tests.support.site import Feeder

ROOT = Path(__file__).resolve().parents[2]
RAMP_KW_S = 1.0
CAP_KW = 12.0


def start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "run", "--config", str(config)],
        cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )


def events(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if isinstance(doc, dict):
                out.append(doc)
    return out


class StatusWatch:
    """Collects every status document the daemon publishes (with arrival time)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.docs: list[tuple[float, dict[str, Any]]] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(self.host, self.port, identifier="watch") as client:
                    await client.subscribe("hashgov/status", qos=1)
                    async for message in client.messages:
                        with contextlib.suppress(ValueError):
                            doc = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                            if isinstance(doc, dict):
                                self.docs.append((time.monotonic(), doc))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def test_sigkill_mid_ramp_then_restart(tmp_path: Path) -> None:
    specs = make_specs(6, "Antminer S19j Pro:braiins:1,Antminer S19j Pro:luxos:1,Antminer S21:braiins:1",
                       "127.33.0.1")
    timing = SiteTiming(ramp_up_kw_per_second=RAMP_KW_S)
    state_dir = tmp_path / "state"
    log = tmp_path / "daemon.log"
    async with (
        MosquittoBroker(workdir=tmp_path / "broker") as broker,
        SimFleet(specs, time_scale=30.0, start_mining=False) as fleet,
    ):
        config = tmp_path / "hashgov.toml"
        text = site_config_text(specs, broker_port=broker.port, state_dir=state_dir,
                                grant_cap_kw=100.0, timing=timing)
        config.write_text(text.replace('format = "console"\nlevel = "warning"',
                                       'format = "json"\nlevel = "info"'))
        feeder = Feeder(broker.host, broker.port, fleet.true_total_watts, surplus_kw=20.0)
        feeder.start()
        watch = StatusWatch(broker.host, broker.port)
        watch.start()
        first = start_daemon(config, log)
        second: subprocess.Popen[bytes] | None = None
        try:
            await eventually(lambda: bool(watch.docs), timeout_seconds=30, what="first status")
            # operator overrides, then wait until they are on disk
            pinned = specs[0].name
            async with aiomqtt.Client(broker.host, broker.port, identifier="operator") as op:
                await op.publish("hashgov/command", json.dumps(
                    {"id": "cap", "command": "set_cap", "cap_kw": CAP_KW}), qos=1)
                await op.publish("hashgov/command", json.dumps(
                    {"id": "pin", "command": "pin", "miner": pinned}), qos=1)
            op_file = state_dir / "operator.json"

            def saved() -> bool:
                with contextlib.suppress(OSError, ValueError):
                    doc = json.loads(op_file.read_text())
                    return bool(doc["cap_watts"] == CAP_KW * 1000 and pinned in doc["pinned"])
                return False

            await eventually(saved, timeout_seconds=10, what="operator.json written")

            # mid-ramp: some miners truly woken, the ramp far from the cap
            def mid_ramp() -> bool:
                doc = watch.docs[-1][1] if watch.docs else {}
                planned = float(doc.get("planned_watts") or 0)
                return fleet.true_total_watts() > 1_000 and planned < CAP_KW * 1000 - 3_000

            await eventually(mid_ramp, timeout_seconds=20, interval_seconds=0.02, what="mid-ramp")
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            assert first.returncode == -signal.SIGKILL
            killed_draw = fleet.true_total_watts()
            # a torn temp file, as a kill during write_json_atomic would leave it
            (state_dir / f".operator.json.{first.pid}.tmp").write_text('{"cap_watts": 99')
            # the will says offline; the draw the fleet is left at keeps going
            await asyncio.sleep(0.5)
            present_draw = fleet.true_total_watts()

            docs_before = len(watch.docs)
            second = start_daemon(config, log)
            restarted = time.monotonic()
            await eventually(lambda: any(d.get("state") == "online" for _, d in watch.docs[docs_before:]),
                             timeout_seconds=30, what="restarted daemon's status")
            after = [(t, d) for t, d in watch.docs[docs_before:] if d.get("state") == "online"]
            # the overrides survived the kill
            assert after[0][1]["cap_watts"] == CAP_KW * 1000
            assert json.loads(op_file.read_text())["pinned"] == [pinned]
            # it read the fleet first: its first decision already knows every miner's state
            first_doc = after[0][1]
            assert first_doc["miner_count"] == 6
            counts = first_doc["miners"]
            assert counts["mining"] + counts["sleeping"] + counts["booting"] == 6, counts
            assert counts["mining"] + counts["booting"] >= 1, "it saw the miners left running"
            # ... and it plans from the present draw, not the whole fleet at once
            assert first_doc["planned_watts"] <= present_draw + RAMP_KW_S * 1000 * 1.5 + 3_500, (
                first_doc["planned_watts"], present_draw)
            # then continues the ramp, never faster than the ramp rate, never above the cap
            await eventually(lambda: fleet.true_total_watts() > CAP_KW * 1000 * 0.8,
                             timeout_seconds=30, what="ramp completes after restart")
            after = [(t, d) for t, d in watch.docs[docs_before:] if d.get("state") == "online"]
            t0, p0 = after[0][0], float(after[0][1]["planned_watts"])
            for t, d in after:
                assert float(d["planned_watts"]) <= CAP_KW * 1000
                slack = RAMP_KW_S * 1000 * (t - t0 + 1.5) + 3_500  # + one miner's step
                assert float(d["planned_watts"]) <= p0 + slack, (t - t0, d["planned_watts"])
            assert fleet.true_total_watts() <= CAP_KW * 1000
            names = [e.get("event") for e in events(log)]
            restored = [i for i, n in enumerate(names) if n == "operator_state_restored"]
            assert restored, "the restarted daemon restored the operator state"
            fleet_reads = [i for i, n in enumerate(names) if n == "fleet_read"]
            assert len(fleet_reads) >= 2 and fleet_reads[-1] > restored[-1]
            assert not any(n in ("operator_state_unreadable", "state_file_corrupt") for n in names)
            print(f"FIGURE kill_draw_watts={killed_draw:.0f} present_draw_watts={present_draw:.0f} "
                  f"first_planned_after_restart_watts={first_doc['planned_watts']:.0f} "
                  f"restart_to_first_status_seconds={after[0][0] - restarted:.2f}")
        finally:
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        await asyncio.to_thread(proc.wait, 10)
                    except subprocess.TimeoutExpired:
                        os.kill(proc.pid, signal.SIGKILL)
            await watch.stop()
            await feeder.stop()
