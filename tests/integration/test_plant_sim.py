"""The plant simulator against a real mosquitto, read by MqttLink + TelemetryStore."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from controller.budget import compute_budget
from controller.clock import SystemClock
from controller.config import MqttConfig, SiteConfig
from controller.mqtt_link import MqttLink
from controller.telemetry import Reading, TelemetryStore
from simulators.broker import MosquittoBroker, find_mosquitto
from simulators.plant.profile import Profile, load_profile
from simulators.plant.publisher import PlantPublisher, expected_reason

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed"),
]

ROOT = Path(__file__).resolve().parents[2]
CAP_KW = 100.0
SITE = SiteConfig(grant_cap_kw=CAP_KW, stale_after_seconds=10.0, grace_seconds=5.0)
STREAMS: dict[str, Any] = {
    "surplus": {"kind": "surplus", "topic": "plant/surplus", "format": "json",
                "value_path": "surplus_kw", "timestamp_path": "ts", "max_plausible_kw": 1000.0},
    "meter": {"kind": "site_meter", "topic": "site/meter", "unit": "W", "sign": -1},
    "dc": {"kind": "other_load", "topic": "dc/load", "format": "json", "value_path": "data.kw",
           "timestamp_path": "data.ts"},
}


async def wait_until(predicate: Callable[[], bool], timeout_seconds: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within timeout")
        await asyncio.sleep(0.005)


@dataclass
class Rig:
    broker: MosquittoBroker
    config: MqttConfig
    store: TelemetryStore
    accepted: list[Reading]
    client: aiomqtt.Client

    def processed(self) -> int:
        return sum(self.store.accepted_counts.values()) + self.store.rejected_total()

    def publisher(self, profile: Profile, **kw: Any) -> PlantPublisher:
        return PlantPublisher(self.config.streams, profile, host=self.broker.host,
                              port=self.broker.port, meter_watts=lambda: 12_345.0, **kw)

    async def tick(self, pub: PlantPublisher, sim_t: float) -> int:
        before = self.processed()
        sent = await pub.tick(self.client, sim_t)
        await wait_until(lambda: self.processed() == before + sent)
        return sent


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with MosquittoBroker(workdir=tmp_path / "broker") as broker:
        config = MqttConfig(host=broker.host, port=broker.port, streams=STREAMS)
        accepted: list[Reading] = []
        store = TelemetryStore(SITE, config.streams, on_accept=accepted.append)
        link = MqttLink(config, will_topic="hashgov/status", handlers=store.handlers(),
                        clock=SystemClock())
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(link.run())
            await asyncio.wait_for(link.wait_connected(), 10)
            async with aiomqtt.Client(broker.host, broker.port) as client:
                yield Rig(broker, config, store, accepted, client)
            task.cancel()


def surplus_kw(rig: Rig) -> float:
    r = rig.store.latest("surplus")
    assert r is not None
    return r.watts / 1000


async def test_steady_all_streams(rig: Rig) -> None:
    pub = rig.publisher(load_profile("steady", CAP_KW))
    assert await rig.tick(pub, 0.0) == 3
    assert surplus_kw(rig) == pytest.approx(80.0)
    meter = rig.store.latest("site_meter")
    other = rig.store.latest("other_load")
    assert meter is not None and meter.watts == 12_345.0
    assert other is not None and other.watts == 0.0
    budget = compute_budget(SITE, rig.store, time.monotonic())
    assert budget.state == "fresh" and budget.watts == pytest.approx(80_000.0)


async def test_steps_ramps_noise_trip(rig: Rig) -> None:
    steps = rig.publisher(load_profile("steps", CAP_KW))
    seen = []
    for t in (0.0, 30.0, 60.0, 90.0):
        await rig.tick(steps, t)
        seen.append(round(surplus_kw(rig), 6))
    assert seen == [80.0, 40.0, 95.0, 60.0]
    ramps = rig.publisher(load_profile("ramps", CAP_KW))
    await rig.tick(ramps, 60.0)
    assert surplus_kw(rig) == pytest.approx(100.0)
    noise = rig.publisher(load_profile("noise", CAP_KW))
    values = []
    for t in range(10):
        await rig.tick(noise, float(t))
        values.append(surplus_kw(rig))
    assert len(set(values)) > 5 and all(50 < v < 110 for v in values)
    trip = rig.publisher(load_profile("trip", CAP_KW))
    await rig.tick(trip, 31.0)
    assert surplus_kw(rig) == 0.0
    assert compute_budget(SITE, rig.store, time.monotonic()).watts == 0.0
    assert rig.store.rejected_total() == 0


async def test_dropout_and_stale(rig: Rig) -> None:
    drop = rig.publisher(load_profile("dropout", CAP_KW))
    assert await rig.tick(drop, 10.0) == 3
    assert await rig.tick(drop, 30.0) == 0
    assert drop.skipped_ticks == 1
    stale = rig.publisher(load_profile("stale", CAP_KW))
    assert await rig.tick(stale, 25.0) == 3
    # surplus and dc carry timestamps that lag an hour: rejected; the bare-number meter has none
    assert rig.store.rejected_counts == {("surplus", "stale"): 1, ("dc", "stale"): 1}


async def test_garbage_is_rejected_and_counted(rig: Rig) -> None:
    pub = rig.publisher(load_profile("garbage", CAP_KW))
    for i in range(60):
        await rig.tick(pub, i / 10)
    assert sum(pub.garbage_sent.values()) > 30
    expected: dict[tuple[str, str], int] = {}
    for i in range(60):
        sample = pub.profile.value_at(i / 10)
        if sample.garbage is None:
            continue
        for name, stream in rig.config.streams.items():
            reason = expected_reason(stream, sample.garbage)
            if reason is None:
                continue  # a negative surplus is a deficit, accepted as 0 W
            key = (name, reason)
            expected[key] = expected.get(key, 0) + 1
    assert rig.store.rejected_counts == expected
    for reading in rig.accepted:
        assert reading.watts in (80_000.0, 12_345.0, 0.0)


async def test_csv_replay_with_run_loop(rig: Rig, tmp_path: Path) -> None:
    path = tmp_path / "day.csv"
    path.write_text("t_seconds,surplus_kw,other_load_kw\n0,10,1\n100,20,2\n")
    pub = rig.publisher(load_profile(str(path), CAP_KW), rate_hz=50.0, time_scale=200.0)
    await asyncio.wait_for(pub.run(duration_seconds=1.0), 10)
    await wait_until(lambda: rig.processed() == pub.published)
    assert pub.published >= 30
    assert surplus_kw(rig) == 20.0
    other = rig.store.latest("other_load")
    assert other is not None and other.watts == 2_000.0
    assert rig.store.rejected_total() == 0


async def test_cli_runs_against_broker(rig: Rig, tmp_path: Path) -> None:
    config_file = tmp_path / "hashgov.toml"
    config_file.write_text(
        f"""
[site]
grant_cap_kw = {CAP_KW}
[mqtt]
host = "127.0.0.1"
port = {rig.broker.port}
[mqtt.streams.surplus]
kind = "surplus"
topic = "plant/surplus"
format = "json"
value_path = "surplus_kw"
timestamp_path = "ts"
[fleet]
"""
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller.cli", "sim", "plant",
        "--broker", f"127.0.0.1:{rig.broker.port}", "--profile", "steady",
        "--config", str(config_file), "--rate-hz", "20", "--duration", "0.5",
        env=env, cwd=ROOT, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    await wait_until(lambda: rig.store.accepted_counts["surplus"] >= 3)
    assert surplus_kw(rig) == pytest.approx(80.0)
