"""EmbeddedBroker (the demo's pure-Python fallback) against real aiomqtt clients and raw sockets."""

from __future__ import annotations

import asyncio
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiomqtt
import pytest

from simulators import broker as broker_module
from simulators.broker import BrokerError, start_broker
from simulators.embedded_broker import EmbeddedBroker, topic_matches, valid_filter

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

TIMEOUT = 5.0


@pytest.fixture
async def broker() -> AsyncIterator[EmbeddedBroker]:
    async with EmbeddedBroker() as b:
        yield b


def client(broker: EmbeddedBroker, **kw: Any) -> aiomqtt.Client:
    return aiomqtt.Client(broker.host, broker.port, timeout=TIMEOUT, **kw)


async def next_message(c: aiomqtt.Client) -> aiomqtt.Message:
    return await asyncio.wait_for(anext(aiter(c.messages)), TIMEOUT)


async def messages_until(c: aiomqtt.Client, marker_topic: str) -> list[tuple[str, bytes]]:
    """Every (topic, payload) received up to and excluding the first on ``marker_topic``."""
    seen: list[tuple[str, bytes]] = []
    while True:
        msg = await next_message(c)
        if msg.topic.value == marker_topic:
            return seen
        assert isinstance(msg.payload, bytes)
        seen.append((msg.topic.value, msg.payload))


async def wait_until(predicate: Callable[[], bool], timeout_seconds: float = TIMEOUT) -> None:
    """Await a condition (polled every 10 ms) — never a fixed sleep."""
    deadline = time.monotonic() + timeout_seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within timeout")
        await asyncio.sleep(0.01)


# ------------------------------------------------------------ raw MQTT client


def _str(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    out, n = bytearray([first]), len(body)
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out) + body


def connect_packet(
    client_id: str,
    *,
    keepalive: int = 60,
    will: tuple[str, bytes] | None = None,
    level: int = 4,
) -> bytes:
    flags = 0x02  # clean session
    payload = _str(client_id)
    if will is not None:
        flags |= 0x04 | (1 << 3) | 0x20  # will, QoS 1, retained
        payload += _str(will[0]) + struct.pack("!H", len(will[1])) + will[1]
    body = _str("MQTT") + bytes([level, flags]) + struct.pack("!H", keepalive) + payload
    return _packet(0x10, body)


async def raw_connect(
    broker: EmbeddedBroker, client_id: str, **kw: Any
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(broker.host, broker.port)
    writer.write(connect_packet(client_id, **kw))
    assert await asyncio.wait_for(reader.readexactly(4), TIMEOUT) == b"\x20\x02\x00\x00"
    await wait_until(lambda: client_id in broker.client_ids)
    return reader, writer


async def closed_by_broker(reader: asyncio.StreamReader) -> bool:
    """True once the broker closed (or reset) the connection."""
    try:
        rest = await asyncio.wait_for(reader.read(), TIMEOUT)
    except ConnectionResetError:
        return True
    return rest == b"" or reader.at_eof()


# ------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("+/+", "/x", True),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("#", "a/b", True),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
    ],
)
def test_topic_matching(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


def test_filter_validation() -> None:
    assert all(valid_filter(f) for f in ("a", "a/+/b", "#", "a/#", "+", "/"))
    assert not any(valid_filter(f) for f in ("", "a/#/b", "a#", "a/b+", "++"))


async def test_exact_and_wildcard_subscriptions(broker: EmbeddedBroker) -> None:
    async with client(broker) as sub, client(broker) as everything, client(broker) as pub:
        await sub.subscribe([("a/b", 0), ("x/+/z", 0), ("w/#", 0), ("end", 0)])
        await everything.subscribe("#")
        for topic in ("a/b", "a/c", "x/y/z", "x/y/y", "w", "w/1/2", "$SYS/t", "end"):
            await pub.publish(topic, topic.encode(), qos=1)
        assert await messages_until(sub, "end") == [
            ("a/b", b"a/b"),
            ("x/y/z", b"x/y/z"),
            ("w", b"w"),
            ("w/1/2", b"w/1/2"),
        ]
        got = [t for t, _ in await messages_until(everything, "end")]
        assert got == ["a/b", "a/c", "x/y/z", "x/y/y", "w", "w/1/2"]  # '#' skips $SYS
        # overlapping subscriptions deliver once; unsubscribe stops delivery
        await sub.subscribe("a/+")
        await sub.unsubscribe(["x/+/z"])
        for topic in ("a/b", "x/y/z", "end"):
            await pub.publish(topic, b"2", qos=1)
        assert await messages_until(sub, "end") == [("a/b", b"2")]


async def test_qos1_round_trip_and_downgrade(broker: EmbeddedBroker) -> None:
    async with client(broker) as sub1, client(broker) as sub0, client(broker) as pub:
        assert list(await sub1.subscribe("q/#", qos=2)) == [1]  # QoS 2 is granted as 1
        assert list(await sub0.subscribe("q/#", qos=0)) == [0]
        await pub.publish("q/one", b"1", qos=1)  # returns once the broker PUBACKed
        await pub.publish("q/zero", b"0", qos=0)
        await pub.publish("q/two", b"2", qos=2)  # inbound QoS 2 handshake completes
        got1 = [await next_message(sub1) for _ in range(3)]
        got0 = [await next_message(sub0) for _ in range(3)]
        assert [(m.topic.value, m.qos, m.retain) for m in got1] == [
            ("q/one", 1, False),
            ("q/zero", 0, False),
            ("q/two", 1, False),
        ]
        assert [m.qos for m in got0] == [0, 0, 0]


async def test_retained_delivered_late_and_deleted_by_empty_payload(
    broker: EmbeddedBroker,
) -> None:
    async with client(broker) as pub:
        await pub.publish("r/state", b"v1", qos=1, retain=True)
        await pub.publish("r/state", b"v2", qos=1, retain=True)
        await pub.publish("r/other", b"o", qos=0, retain=True)
    async with client(broker) as late:
        await late.subscribe("r/state", qos=1)
        msg = await next_message(late)
        assert (msg.payload, msg.retain, msg.qos) == (b"v2", True, 1)
        async with client(broker) as pub:
            await pub.publish("r/state", b"", qos=1, retain=True)
        # a live subscriber sees the deletion as a normal (non-retained) empty message
        msg = await next_message(late)
        assert (msg.payload, msg.retain) == (b"", False)
    async with client(broker) as later:
        await later.subscribe("r/#", qos=1)
        await later.publish("r/state", b"marker", qos=1)
        msg = await next_message(later)
        assert (msg.topic.value, msg.payload, msg.retain) == ("r/other", b"o", True)
        msg = await next_message(later)  # no retained r/state came before the marker
        assert (msg.topic.value, msg.payload, msg.retain) == ("r/state", b"marker", False)


async def test_will_on_abrupt_socket_close(broker: EmbeddedBroker) -> None:
    async with client(broker) as observer:
        await observer.subscribe("status/#", qos=1)
        _reader, writer = await raw_connect(broker, "dying", will=("status/dying", b"gone"))
        writer.transport.abort()
        msg = await next_message(observer)
        assert (msg.topic.value, msg.payload, msg.qos) == ("status/dying", b"gone", 1)
    async with client(broker) as late:  # the will was retained
        await late.subscribe("status/dying")
        msg = await next_message(late)
        assert (msg.payload, msg.retain) == (b"gone", True)


async def test_will_on_keepalive_expiry(broker: EmbeddedBroker) -> None:
    async with client(broker) as observer:
        await observer.subscribe("status/#", qos=1)
        keepalive_seconds = 1
        reader, writer = await raw_connect(
            broker, "silent", keepalive=keepalive_seconds, will=("status/silent", b"timeout")
        )
        start = time.monotonic()
        msg = await next_message(observer)  # no PINGREQ: dropped after 1.5 × keepalive
        assert msg.payload == b"timeout"
        # Each bound catches its own bug: a broker that drops a client before 1.5 ×
        # keepalive has passed (e.g. at 1 ×, or at once) fails the lower one; one that
        # checks keepalive late or lazily fails the upper one (next_message would wait
        # its full TIMEOUT for one that never checks). 0.2 s / 1.5 s of scheduling slack.
        expiry = 1.5 * keepalive_seconds
        assert expiry - 0.2 < time.monotonic() - start < expiry + 1.5
        assert await closed_by_broker(reader)
        writer.close()


async def test_will_when_aiomqtt_process_is_killed(broker: EmbeddedBroker) -> None:
    script = (
        "import asyncio, sys, aiomqtt\n"
        "async def main():\n"
        f"    async with aiomqtt.Client({broker.host!r}, {broker.port}, identifier='proc',\n"
        "            will=aiomqtt.Will('status/proc', b'killed', qos=1, retain=True)):\n"
        "        print('up', flush=True)\n"
        "        await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    async with client(broker) as observer:
        await observer.subscribe("status/#", qos=1)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
        )
        try:
            assert proc.stdout is not None
            assert await asyncio.wait_for(proc.stdout.readline(), 10) == b"up\n"
            proc.kill()
            await proc.wait()
            msg = await next_message(observer)
            assert (msg.topic.value, msg.payload) == ("status/proc", b"killed")
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_no_will_after_clean_disconnect(broker: EmbeddedBroker) -> None:
    async with client(broker) as observer, client(broker) as pub:
        await observer.subscribe("status/#", qos=1)
        reader, writer = await raw_connect(broker, "polite", will=("status/polite", b"gone"))
        writer.write(b"\xe0\x00")  # DISCONNECT
        assert await closed_by_broker(reader)
        writer.close()
        async with client(broker, identifier="aio", will=aiomqtt.Will("status/aio", b"x")):
            pass  # aiomqtt sends DISCONNECT on exit
        await wait_until(lambda: len(broker.client_ids) == 2)  # observer and pub
        await pub.publish("status/marker", b"m", qos=1)
        msg = await next_message(observer)
        assert msg.topic.value == "status/marker"


async def test_takeover_drops_old_connection_and_sends_its_will(broker: EmbeddedBroker) -> None:
    async with client(broker) as observer:
        await observer.subscribe("status/#", qos=1)
        reader, writer = await raw_connect(broker, "same-id", will=("status/old", b"taken"))
        async with client(broker, identifier="same-id") as new:
            msg = await next_message(observer)
            assert (msg.topic.value, msg.payload) == ("status/old", b"taken")
            assert await closed_by_broker(reader)
            writer.close()
            await new.publish("status/new", b"ok", qos=1)
            assert (await next_message(observer)).payload == b"ok"


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x00",  # reserved packet type
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # not MQTT at all
        b"\x10\xff\xff\xff\xff\x01",  # remaining length longer than 4 bytes
        b"\x10\xff\xff\xff\x7f",  # 256 MiB claimed: over the size cap
        _packet(0x10, _str("XYZ") + b"\x04\x02\x00\x3c" + _str("c")),  # unknown protocol
        _packet(0x10, _str("MQTT") + b"\x04\x03\x00\x3c" + _str("c")),  # reserved flag
        _packet(0x10, _str("MQTT") + b"\x04\x02"),  # truncated CONNECT
        connect_packet("a") + connect_packet("a"),  # second CONNECT
        connect_packet("a") + _packet(0x30, b"\x00\x10ab"),  # topic length past the end
        connect_packet("a") + _packet(0x30, _str("a/#") + b"x"),  # wildcard in topic
        connect_packet("a") + _packet(0x30, b"\x00\x02\xc3\x28"),  # invalid UTF-8
        connect_packet("a") + _packet(0x36, _str("t") + b"\x00\x01"),  # QoS 3
        connect_packet("a") + _packet(0x80, b"\x00\x01" + _str("t") + b"\x00"),  # bad flags
        connect_packet("a") + _packet(0x82, b"\x00\x01"),  # SUBSCRIBE without topics
        connect_packet("a") + _packet(0x82, b"\x00\x01" + _str("t") + b"\x07"),  # bad options
        connect_packet("a") + b"\xc0\x01\x00",  # PINGREQ with a body
        connect_packet("a") + b"\x20\x02\x00\x00",  # CONNACK from a client
    ],
)
async def test_malformed_packets_drop_only_that_client(
    broker: EmbeddedBroker, garbage: bytes
) -> None:
    async with client(broker) as good:
        await good.subscribe("ok")
        reader, writer = await asyncio.open_connection(broker.host, broker.port)
        writer.write(garbage)
        assert await closed_by_broker(reader)
        writer.close()
        await wait_until(lambda: len(broker.client_ids) == 1)  # only the good one
        await good.publish("ok", b"still here", qos=1)
        assert (await next_message(good)).payload == b"still here"
    assert broker.running


async def test_malformed_packet_is_ungraceful_and_sends_will(broker: EmbeddedBroker) -> None:
    async with client(broker) as observer:
        await observer.subscribe("status/#")
        _reader, writer = await raw_connect(broker, "bad", will=("status/bad", b"dropped"))
        writer.write(b"\xf0\x00")  # reserved type 15
        assert (await next_message(observer)).payload == b"dropped"
        writer.close()


async def test_mqtt5_is_refused_with_connack_1(broker: EmbeddedBroker) -> None:
    reader, writer = await asyncio.open_connection(broker.host, broker.port)
    writer.write(connect_packet("v5", level=5))
    assert await asyncio.wait_for(reader.readexactly(4), TIMEOUT) == b"\x20\x02\x00\x01"
    assert await closed_by_broker(reader)
    writer.close()


async def test_empty_client_id_gets_one_and_credentials_are_accepted(
    broker: EmbeddedBroker,
) -> None:
    async with client(broker, username="anyone", password="anything") as c:
        await c.subscribe("t")
        await c.publish("t", b"x")
        assert (await next_message(c)).payload == b"x"
        assert len(broker.client_ids) == 1 and broker.client_ids[0]


async def test_lifecycle_kill_restart_same_port() -> None:
    broker = EmbeddedBroker()
    port = broker.port
    assert broker.url == f"mqtt://127.0.0.1:{port}"
    async with broker:
        async with client(broker) as c:
            await c.publish("keep", b"1", retain=True, qos=1)
            await broker.kill()
            assert not broker.running
            with pytest.raises(aiomqtt.MqttError):
                await c.publish("after", b"x", qos=1, timeout=2)
        with pytest.raises(aiomqtt.MqttError):
            async with client(broker):
                pass
        await broker.restart()
        assert broker.running and broker.port == port
        async with client(broker) as c:
            await c.subscribe("#")
            await c.publish("marker", b"m")
            # retained messages are not persisted across a restart (like mosquitto here)
            assert (await next_message(c)).topic.value == "marker"
    assert not broker.running
    with pytest.raises(BrokerError, match="cannot listen"):
        async with EmbeddedBroker(port=port), EmbeddedBroker(port=port):
            pass


async def test_start_broker_falls_back_without_mosquitto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker_module, "find_mosquitto", lambda: None)
    b = await start_broker()
    try:
        assert isinstance(b, EmbeddedBroker) and b.running
        async with aiomqtt.Client(b.host, b.port):
            pass
    finally:
        await b.stop()


async def test_start_broker_prefer_embedded() -> None:
    b = await start_broker(prefer="embedded")
    try:
        assert isinstance(b, EmbeddedBroker)
    finally:
        await b.stop()
