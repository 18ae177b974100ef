"""A tiny pure-Python MQTT 3.1.1 broker: the demo's fallback when mosquitto is absent.

NOT a production broker. It exists so ``hashgov demo`` runs on machines without
mosquitto (``simulators.broker.start_broker()`` picks it then). Production and
the integration tests use mosquitto.

Supported (what aiomqtt 2.x / paho send by default, protocol level 4, and level 3
``MQIsdp`` whose packets are the same):

* CONNECT/CONNACK: any username/password is accepted; sessions are always clean
  (a ``clean_session=False`` client is served as clean and told "no session
  present"); an empty client id gets a generated one; a second connection with
  the same client id takes over (the old one is dropped, its will published).
* SUBSCRIBE/SUBACK and UNSUBSCRIBE/UNSUBACK with exact topics and ``+``/``#``
  (wildcards do not match ``$``-topics at the first level); granted QoS is at
  most 1; an invalid filter gets the 0x80 failure code.
* PUBLISH QoS 0 and 1 both ways (PUBACK), delivered at min(publish QoS, granted
  QoS), once per client even for overlapping subscriptions. An inbound QoS 2
  publish is acknowledged (PUBREC/PUBCOMP) and delivered at QoS ≤ 1.
* Retained messages (an empty retained payload deletes); they live in memory and
  are lost when the broker stops, like mosquitto with ``persistence false``.
* Last will on an ungraceful end (socket drop, keepalive × 1.5 expiry, malformed
  packet, takeover), never after DISCONNECT.
* PINGREQ/PINGRESP.

Not supported: MQTT 5 (refused with CONNACK 0x01), TLS, authentication,
persistent sessions, QoS 1 redelivery, outbound QoS 2. A malformed or oversized
packet drops that client only; the broker keeps serving everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import struct
from dataclasses import dataclass, field
from types import TracebackType
from typing import NamedTuple, Self

from simulators.broker import BrokerError, free_port

_log = logging.getLogger(__name__)

MAX_PACKET_BYTES = 1 << 20  # remaining-length cap per packet (1 MiB)
MAX_WRITE_BUFFER_BYTES = 8 << 20  # a subscriber this far behind is dropped
CONNECT_TIMEOUT_SECONDS = 10.0  # a new socket must send CONNECT within this
TAKEOVER_TIMEOUT_SECONDS = 5.0

# fixed-header packet types (upper nibble)
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = range(1, 8)
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = range(8, 15)

# CONNACK return codes
_ACCEPTED, _BAD_PROTOCOL, _BAD_CLIENT_ID = 0, 1, 2


class ProtocolError(Exception):
    """The client broke the protocol; drop it."""


class Message(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(eq=False)
class _Session:
    client_id: str
    writer: asyncio.StreamWriter
    keepalive: int
    will: Message | None
    subscriptions: dict[str, int] = field(default_factory=dict)  # filter -> granted QoS
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _pids: itertools.cycle[int] = field(default_factory=lambda: itertools.cycle(range(1, 65536)))

    def next_packet_id(self) -> int:
        return next(self._pids)


# ------------------------------------------------------------------ codec


class _Body:
    """Cursor over a packet body; any overrun or bad string is a ProtocolError."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError("packet shorter than its fields")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = struct.unpack("!H", self.take(2))[0]
        return value

    def binary(self) -> bytes:
        return self.take(self.u16())

    def string(self) -> str:
        try:
            text = self.binary().decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("string is not UTF-8") from None
        if "\x00" in text:
            raise ProtocolError("string contains U+0000")
        return text

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)

    @property
    def exhausted(self) -> bool:
        return self.pos == len(self.data)


def _u16(value: int) -> bytes:
    return struct.pack("!H", value)


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _u16(len(raw)) + raw


def _packet(first_byte: int, body: bytes = b"") -> bytes:
    """Fixed header (type/flags byte + varint remaining length) + body."""
    out = bytearray([first_byte])
    n = len(body)
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out) + body


async def _read_packet(
    reader: asyncio.StreamReader, max_bytes: int, *, first_byte: int | None = None
) -> tuple[int, int, _Body]:
    """(packet type, header flags, body) of the next packet; ``first_byte``: the
    only acceptable type/flags byte (checked before waiting for the body)."""
    first = (await reader.readexactly(1))[0]
    if first_byte is not None and first != first_byte:
        raise ProtocolError(f"expected packet byte {first_byte:#x}, got {first:#x}")
    length = 0
    for shift in (0, 7, 14, 21):  # at most 4 length bytes
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
    else:
        raise ProtocolError("remaining length longer than 4 bytes")
    if length > max_bytes:
        raise ProtocolError(f"packet of {length} bytes exceeds the {max_bytes} byte cap")
    return first >> 4, first & 0x0F, _Body(await reader.readexactly(length))


# ------------------------------------------------------------------ topics


def valid_topic(topic: str) -> bool:
    return bool(topic) and "+" not in topic and "#" not in topic


def valid_filter(topic_filter: str) -> bool:
    if not topic_filter:
        return False
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT matching; ``$``-topics are not matched by a leading wildcard."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    parts = topic.split("/")
    filter_parts = topic_filter.split("/")
    for i, part in enumerate(filter_parts):
        if part == "#":
            return True
        if i >= len(parts) or (part != "+" and part != parts[i]):
            return False
    return len(filter_parts) == len(parts)


# ------------------------------------------------------------------ broker


class EmbeddedBroker:
    """In-process MQTT broker on ``host:port`` (see the module docstring for its limits).

    Same surface as ``MosquittoBroker`` for the demo: start/stop/kill/restart,
    async context manager, ``host``, ``port`` (fixed at construction, so a restart
    reuses it), ``url``, ``running``.
    """

    max_packet_bytes: int = MAX_PACKET_BYTES

    def __init__(self, *, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        self._server: asyncio.Server | None = None
        self._sessions: dict[str, _Session] = {}  # client id -> connected session
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._retained: dict[str, Message] = {}
        self._closing = False
        self._ids = itertools.count(1)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.is_serving()

    @property
    def client_ids(self) -> list[str]:
        """Ids of the currently connected clients."""
        return list(self._sessions)

    # ---------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Listen on host:port; returns once connections are accepted."""
        if self.running:
            return
        self._closing = False
        self._retained.clear()  # like mosquitto without persistence
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as exc:
            raise BrokerError(
                f"embedded broker cannot listen on {self.host}:{self.port}: {exc}"
            ) from exc
        _log.info("embedded MQTT broker listening on %s", self.url)

    async def stop(self) -> None:
        """Stop listening and close every client connection (no wills are sent)."""
        await self._shutdown(abort=False)

    async def kill(self) -> None:
        """Vanish: abort every connection without a clean close (no wills are sent)."""
        await self._shutdown(abort=True)

    async def restart(self) -> None:
        """Stop (if running) and start again on the same port."""
        await self.stop()
        await self.start()

    async def _shutdown(self, *, abort: bool) -> None:
        if self._server is None:
            return
        self._closing = True
        self._server.close()
        for writer in list(self._connections.values()):
            if abort:
                writer.transport.abort()
            else:
                writer.close()
        tasks = list(self._connections)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=5.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        with contextlib.suppress(Exception):
            await self._server.wait_closed()
        self._server = None
        self._sessions.clear()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -------------------------------------------------------- connections

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection, from CONNECT to close; never raises."""
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        peer = writer.get_extra_info("peername")
        session: _Session | None = None
        graceful = False
        try:
            session = await self._handshake(reader, writer)
            if session is not None:
                graceful = await self._session_loop(session, reader)
        except (ProtocolError, asyncio.IncompleteReadError, ConnectionError, TimeoutError) as exc:
            _log.debug("dropping MQTT client %s: %r", peer, exc)
        except Exception:  # a bug here must cost one client, not the broker
            _log.exception("embedded broker: error serving %s", peer)
        finally:
            self._connections.pop(task, None)
            if session is not None:
                self._end_session(session, send_will=not graceful and not self._closing)
            writer.close()

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> _Session | None:
        """Read CONNECT, answer CONNACK; the new session, or None if refused."""
        async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
            _type, _flags, body = await _read_packet(
                reader, self.max_packet_bytes, first_byte=CONNECT << 4
            )
        name, level = body.string(), body.u8()
        if (name, level) not in (("MQTT", 4), ("MQIsdp", 3)):
            if name in ("MQTT", "MQIsdp"):  # known protocol, unsupported level (e.g. MQTT 5)
                writer.write(_packet(CONNACK << 4, bytes([0, _BAD_PROTOCOL])))
                return None
            raise ProtocolError(f"unknown protocol {name!r}")
        cflags = body.u8()
        keepalive = body.u16()
        clean, has_will = bool(cflags & 0x02), bool(cflags & 0x04)
        will_qos, will_retain = (cflags >> 3) & 0x03, bool(cflags & 0x20)
        if cflags & 0x01 or will_qos == 3 or (not has_will and (will_qos or will_retain)):
            raise ProtocolError("invalid CONNECT flags")
        client_id = body.string()
        will: Message | None = None
        if has_will:
            will_topic = body.string()
            will = Message(will_topic, body.binary(), will_qos, will_retain)
            if not valid_topic(will_topic):
                raise ProtocolError("invalid will topic")
        if cflags & 0x80:
            body.string()  # username: accepted, whatever it is
        if cflags & 0x40:
            body.binary()  # password: accepted, whatever it is
        if not body.exhausted:
            raise ProtocolError("trailing bytes after CONNECT payload")
        if not client_id:
            if not clean:
                writer.write(_packet(CONNACK << 4, bytes([0, _BAD_CLIENT_ID])))
                return None
            client_id = f"embedded-{next(self._ids)}"
        old = self._sessions.get(client_id)
        if old is not None:  # takeover: drop the old connection and let it publish its will
            old.writer.transport.abort()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TAKEOVER_TIMEOUT_SECONDS):
                    await old.done.wait()
        session = _Session(client_id, writer, keepalive, will)
        self._sessions[client_id] = session
        writer.write(_packet(CONNACK << 4, bytes([0, _ACCEPTED])))  # never a stored session
        _log.debug("MQTT client %r connected", client_id)
        return session

    async def _session_loop(self, session: _Session, reader: asyncio.StreamReader) -> bool:
        """Serve packets until the client leaves; True after a DISCONNECT."""
        timeout = session.keepalive * 1.5 if session.keepalive else None
        while True:
            async with asyncio.timeout(timeout):  # keepalive: any packet within 1.5 × keepalive
                ptype, flags, body = await _read_packet(reader, self.max_packet_bytes)
            if ptype == PUBLISH:
                self._on_publish(session, flags, body)
                continue
            if flags != (0x02 if ptype in (PUBREL, SUBSCRIBE, UNSUBSCRIBE) else 0):
                raise ProtocolError(f"bad flags {flags:#x} for packet type {ptype}")
            if ptype == SUBSCRIBE:
                self._on_subscribe(session, body)
            elif ptype == UNSUBSCRIBE:
                self._on_unsubscribe(session, body)
            elif ptype in (PUBACK, PUBREL):  # ack of our QoS 1 send / step 2 of inbound QoS 2
                packet_id = body.u16()
                if ptype == PUBREL:
                    self._send(session, _packet(PUBCOMP << 4, _u16(packet_id)))
            elif ptype == PINGREQ:
                self._send(session, _packet(PINGRESP << 4))
            elif ptype == DISCONNECT:
                return True
            else:
                raise ProtocolError(f"unexpected packet type {ptype}")
            if not body.exhausted:
                raise ProtocolError(f"trailing bytes in packet type {ptype}")

    def _end_session(self, session: _Session, *, send_will: bool) -> None:
        if self._sessions.get(session.client_id) is session:
            del self._sessions[session.client_id]
        if send_will and session.will is not None:
            _log.debug("publishing will of %r", session.client_id)
            self._route(session.will)
        session.done.set()
        _log.debug("MQTT client %r gone (will %s)", session.client_id, send_will)

    # ------------------------------------------------------------ packets

    def _on_publish(self, session: _Session, flags: int, body: _Body) -> None:
        qos, retain = (flags >> 1) & 0x03, bool(flags & 0x01)
        if qos == 3:
            raise ProtocolError("PUBLISH with QoS 3")
        topic = body.string()
        if not valid_topic(topic):
            raise ProtocolError(f"invalid publish topic {topic!r}")
        packet_id = body.u16() if qos else 0
        if qos and not packet_id:
            raise ProtocolError("PUBLISH with packet id 0")
        self._route(Message(topic, body.rest(), qos, retain))
        if qos == 1:
            self._send(session, _packet(PUBACK << 4, _u16(packet_id)))
        elif qos == 2:
            self._send(session, _packet(PUBREC << 4, _u16(packet_id)))

    def _on_subscribe(self, session: _Session, body: _Body) -> None:
        packet_id = body.u16()
        requests: list[tuple[str, int]] = []
        while not body.exhausted:
            topic_filter, options = body.string(), body.u8()
            if options & 0xFC or options == 3:
                raise ProtocolError("bad SUBSCRIBE options")
            requests.append((topic_filter, options))
        if not requests:
            raise ProtocolError("SUBSCRIBE without topics")
        codes = bytearray()
        for topic_filter, qos in requests:
            if valid_filter(topic_filter):
                granted = min(qos, 1)
                session.subscriptions[topic_filter] = granted
                codes.append(granted)
            else:
                codes.append(0x80)
        self._send(session, _packet(SUBACK << 4, _u16(packet_id) + bytes(codes)))
        for topic_filter, _qos in requests:  # retained messages after the SUBACK
            granted_qos = session.subscriptions.get(topic_filter)
            if granted_qos is None:
                continue
            for msg in list(self._retained.values()):
                if topic_matches(topic_filter, msg.topic):
                    self._deliver(session, msg, min(msg.qos, granted_qos), retain=True)

    def _on_unsubscribe(self, session: _Session, body: _Body) -> None:
        packet_id = body.u16()
        filters: list[str] = []
        while not body.exhausted:
            filters.append(body.string())
        if not filters:
            raise ProtocolError("UNSUBSCRIBE without topics")
        for topic_filter in filters:
            session.subscriptions.pop(topic_filter, None)
        self._send(session, _packet(UNSUBACK << 4, _u16(packet_id)))

    # ------------------------------------------------------------ routing

    def _route(self, msg: Message) -> None:
        """Store/delete a retained message and deliver to every matching subscriber."""
        if msg.retain:
            if msg.payload:
                self._retained[msg.topic] = msg
            else:
                self._retained.pop(msg.topic, None)
        for session in list(self._sessions.values()):
            granted = max(
                (q for f, q in session.subscriptions.items() if topic_matches(f, msg.topic)),
                default=-1,
            )
            if granted >= 0:  # once per client, at the best matching subscription
                self._deliver(session, msg, min(msg.qos, granted), retain=False)

    def _deliver(self, session: _Session, msg: Message, qos: int, *, retain: bool) -> None:
        header = (PUBLISH << 4) | (qos << 1) | int(retain)
        packet_id = _u16(session.next_packet_id()) if qos else b""
        self._send(session, _packet(header, _string(msg.topic) + packet_id + msg.payload))

    def _send(self, session: _Session, data: bytes) -> None:
        writer = session.writer
        if writer.is_closing():
            return
        writer.write(data)
        if writer.transport.get_write_buffer_size() > MAX_WRITE_BUFFER_BYTES:
            _log.warning("dropping MQTT client %r: not reading its messages", session.client_id)
            writer.transport.abort()  # its own task sees EOF and ends the session
