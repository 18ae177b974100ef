"""MqttLink + TelemetryStore against a real mosquitto: ingest, reconnect, will, auth."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from controller.clock import SystemClock
from controller.config import MqttConfig, SiteConfig
from controller.mqtt_link import MqttLink
from controller.telemetry import TelemetryStore
from simulators.broker import MosquittoBroker, find_mosquitto, make_password_file

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed"),
]

ROOT = Path(__file__).resolve().parents[2]


async def wait_until(predicate: Callable[[], bool], timeout_seconds: float = 10.0) -> None:
    """Await a condition (polled every 10 ms) — never a fixed sleep."""
    deadline = time.monotonic() + timeout_seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within timeout")
        await asyncio.sleep(0.01)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[MosquittoBroker]:
    async with MosquittoBroker(workdir=tmp_path / "broker") as b:
        yield b


def mqtt_config(broker: MosquittoBroker, **kw: Any) -> MqttConfig:
    base: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "client_id": "hashgov-test",
        "keepalive_seconds": 5,
        "streams": {
            "surplus": {
                "kind": "surplus",
                "topic": "plant/surplus",
                "format": "json",
                "value_path": "surplus_kw",
                "timestamp_path": "ts",
            },
            "dc": {"kind": "other_load", "topic": "dc/load", "unit": "W"},
        },
    }
    base.update(kw)
    return MqttConfig(**base)


def make_link(config: MqttConfig, handlers: dict[str, Any], **kw: Any) -> MqttLink:
    return MqttLink(
        config,
        will_topic="hashgov/status",
        will_payload="offline",
        handlers=handlers,
        clock=SystemClock(),
        backoff_initial_seconds=0.05,
        backoff_max_seconds=0.3,
        **kw,
    )


async def test_link_ingests_telemetry_end_to_end(broker: MosquittoBroker) -> None:
    config = mqtt_config(broker)
    store = TelemetryStore(SiteConfig(grant_cap_kw=100), config.streams)
    link = make_link(config, store.handlers())
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(link.run())
        await asyncio.wait_for(link.wait_connected(), 10)
        assert link.connected
        async with aiomqtt.Client(broker.host, broker.port) as pub:
            await pub.publish(
                "plant/surplus", json.dumps({"surplus_kw": 42.5, "ts": time.time()}), qos=1
            )
            await pub.publish("dc/load", b"1500", qos=1)
            await pub.publish("dc/load", b"NaN", qos=1)
            await pub.publish("not/ours", b"1", qos=1)
        await wait_until(
            lambda: store.rejected_total() == 1 and store.latest("other_load") is not None
        )
        surplus = store.latest("surplus")
        other = store.latest("other_load")
        assert surplus is not None and surplus.watts == 42_500.0 and surplus.source_wall is not None
        assert other is not None and other.watts == 1_500.0
        assert store.rejected_counts == {("dc", "nan"): 1}
        task.cancel()


def hold_the_loop_while(sender: Any) -> None:
    """Block the calling (event-loop) thread as one long turn would: until ``sender``
    has published everything, then half a second more."""
    sender.start()
    sender.join(10)
    time.sleep(0.5)


async def test_messages_are_read_and_stamped_while_the_main_loop_is_busy(
    broker: MosquittoBroker,
) -> None:
    """At 10,000 miners a main-loop turn can take a second. The connection lives on
    its own thread: messages published during such a turn are read and stamped on
    arrival, then all delivered at the next turn (on the main loop, in order)."""
    import threading

    import paho.mqtt.publish as paho_publish

    config = mqtt_config(broker)
    got: list[tuple[bytes, float, str]] = []
    link = make_link(
        config,
        {"dc/load": lambda t, p, w, m: got.append((p, m, threading.current_thread().name))},
    )
    count = 200
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(link.run())
        await asyncio.wait_for(link.wait_connected(), 10)
        messages = [{"topic": "dc/load", "payload": str(i), "qos": 1} for i in range(count)]
        sender = threading.Thread(
            target=paho_publish.multiple,
            args=(messages,),
            kwargs={"hostname": broker.host, "port": broker.port},
        )
        busy_from = time.monotonic()
        hold_the_loop_while(sender)
        busy_until = time.monotonic()
        assert got == []  # handlers run on the main loop only, so not yet
        await wait_until(lambda: len(got) == count)
        assert [p for p, _, _ in got] == [str(i).encode() for i in range(count)]
        assert all(busy_from <= m < busy_until for _, m, _ in got)
        assert {name for _, _, name in got} == {threading.current_thread().name}
        task.cancel()


async def test_reconnects_and_resubscribes_after_broker_kill(broker: MosquittoBroker) -> None:
    config = mqtt_config(broker)
    received: list[bytes] = []
    link = make_link(config, {"dc/load": lambda t, p, w, m: received.append(p)})
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(link.run())
        await asyncio.wait_for(link.wait_connected(), 10)
        await broker.kill()
        await wait_until(lambda: not link.connected)
        # publishing while down is safe: the latest per topic is kept
        # retained: the link may reconnect before the observer below subscribes
        assert await link.publish("hashgov/reply", b"one", retain=True) is False
        assert await link.publish("hashgov/reply", b"two", retain=True) is False
        assert link.pending_topics == ["hashgov/reply"]
        await broker.start()
        async with aiomqtt.Client(broker.host, broker.port) as observer:
            await observer.subscribe("hashgov/reply", qos=1)
            await wait_until(lambda: link.connected and link.connect_count == 2)
            assert link.failure_count >= 1
            first = await asyncio.wait_for(anext(aiter(observer.messages)), 10)
            assert first.payload == b"two"
            assert link.pending_topics == []
            async with aiomqtt.Client(broker.host, broker.port) as pub:
                await pub.publish("dc/load", b"7", qos=1)
            await wait_until(lambda: received == [b"7"])
        task.cancel()


async def test_retained_status_and_will_offline_when_process_dies(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    script = tmp_path / "link_proc.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio
            from controller.clock import SystemClock
            from controller.config import MqttConfig
            from controller.mqtt_link import MqttLink

            async def main():
                config = MqttConfig(host={broker.host!r}, port={broker.port}, client_id="dying",
                    streams={{"s": {{"kind": "surplus", "topic": "plant/surplus"}}}})
                link = MqttLink(config, will_topic="hashgov/status", will_payload="offline",
                    birth_payload="online", handlers={{"plant/surplus": lambda *a: None}},
                    clock=SystemClock())
                await link.run()

            asyncio.run(main())
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(sys.executable, str(script), env=env, cwd=ROOT)
    try:
        async with aiomqtt.Client(broker.host, broker.port) as observer:
            await observer.subscribe("hashgov/status", qos=1)
            messages = aiter(observer.messages)
            seen: list[bytes | bytearray | int | float | str | None] = []
            while not seen or seen[-1] != b"online":
                msg = await asyncio.wait_for(anext(messages), 15)
                seen.append(msg.payload)
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            msg = await asyncio.wait_for(anext(messages), 15)
            assert msg.payload == b"offline"
        # a client that arrives later sees the retained will
        async with aiomqtt.Client(broker.host, broker.port) as late:
            await late.subscribe("hashgov/status", qos=1)
            msg = await asyncio.wait_for(anext(aiter(late.messages)), 10)
            assert msg.payload == b"offline" and msg.retain
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_password_protected_broker(tmp_path: Path) -> None:
    pwfile = make_password_file(tmp_path / "passwd", {"hashgov": "s3cret-pw"})
    extra = f"password_file {pwfile}\nallow_anonymous false\n"
    good = tmp_path / "good"
    good.write_text("s3cret-pw\n")
    bad = tmp_path / "bad"
    bad.write_text("wrong-pw\n")
    async with MosquittoBroker(workdir=tmp_path / "broker", extra_conf=extra) as broker:
        ok_link = make_link(
            mqtt_config(broker, username="hashgov", credentials_file=good, client_id="ok"),
            {"dc/load": lambda *a: None},
        )
        bad_link = make_link(
            mqtt_config(broker, username="hashgov", credentials_file=bad, client_id="bad"),
            {"dc/load": lambda *a: None},
        )
        async with asyncio.TaskGroup() as tg:
            t1 = tg.create_task(ok_link.run())
            t2 = tg.create_task(bad_link.run())
            await asyncio.wait_for(ok_link.wait_connected(), 10)
            await wait_until(lambda: bad_link.failure_count >= 2)
            assert not bad_link.connected and bad_link.connect_count == 0
            t1.cancel()
            t2.cancel()
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(broker.host, broker.port):
                pass


async def test_password_never_logged(
    broker: MosquittoBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "pw"
    secret.write_text("do-not-print-me")
    link = make_link(mqtt_config(broker, username="u", credentials_file=secret), {"x/y": print})
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(link.run())
        await asyncio.wait_for(link.wait_connected(), 10)
        await broker.kill()
        await wait_until(lambda: link.failure_count >= 2)
        task.cancel()
    out = capsys.readouterr()
    assert "do-not-print-me" not in out.out + out.err
    assert "mqtt_connected" in out.out + out.err
