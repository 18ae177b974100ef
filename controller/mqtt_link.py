"""The daemon's one MQTT connection: subscribe, dispatch, publish, reconnect.

``MqttLink.run()`` connects with aiomqtt (TLS from ``TlsConfig``; the password
is read from ``credentials_file`` at every connect and never logged), sets the
last will, subscribes to every handler topic and dispatches each message with
its receive times (wall and monotonic, from the injected clock). When the
connection drops for any reason it reconnects with capped exponential backoff
and jitter, resubscribes and publishes what was queued meanwhile.

``publish()`` is safe while disconnected: the *latest* message per topic is
kept and published on the next connect (older ones for the same topic are
dropped — status and replies are state, not history).
"""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import structlog

from controller.clock import Clock
from controller.config import MqttConfig
from controller.logs import register_secret

MessageHandler = Callable[[str, bytes, float, float], object]


class InsecureConnectionError(ValueError):
    """Plaintext MQTT to a host that is not loopback, without allow_insecure."""


class CredentialsError(ValueError):
    """The credentials file cannot be read (its content is never shown)."""


@dataclass(frozen=True, slots=True)
class _Pending:
    payload: bytes
    retain: bool
    qos: int


def _as_bytes(payload: object) -> bytes:
    if payload is None:
        return b""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray | memoryview):
        return bytes(payload)
    return str(payload).encode()


def read_password(path: Path) -> str:
    """The password alone, trailing newline stripped. Errors name the file, never the content."""
    try:
        password = path.read_text().rstrip("\r\n")
    except OSError as exc:
        raise CredentialsError(
            f"mqtt.credentials_file {str(path)!r} cannot be read: {exc.strerror or exc}"
        ) from None
    register_secret(password)  # from now on it is masked in every log line
    return password


def client_options(
    config: MqttConfig, *, will: aiomqtt.Will | None = None, timeout_seconds: float = 10.0
) -> dict[str, Any]:
    """Keyword arguments for ``aiomqtt.Client`` from the config (hostname, port, TLS,
    username, password read from credentials_file now, identifier, keepalive, will).
    Raises CredentialsError when the password file cannot be read."""
    password = read_password(config.credentials_file) if config.credentials_file else None
    tls: aiomqtt.TLSParameters | None = None
    if config.tls is not None:
        tls = aiomqtt.TLSParameters(
            ca_certs=str(config.tls.ca_file),
            certfile=str(config.tls.cert_file) if config.tls.cert_file else None,
            keyfile=str(config.tls.key_file) if config.tls.key_file else None,
        )
    return {
        "hostname": config.host,
        "port": config.port,
        "username": config.username,
        "password": password,
        "identifier": config.client_id,
        "keepalive": config.keepalive_seconds,
        "tls_params": tls,
        "will": will,
        "timeout": timeout_seconds,
    }


class MqttLink:
    def __init__(
        self,
        config: MqttConfig,
        *,
        will_topic: str,
        will_payload: bytes | str = b"offline",
        handlers: Mapping[str, MessageHandler],
        clock: Clock,
        birth_payload: bytes | str | None = None,
        backoff_initial_seconds: float = 0.5,
        backoff_max_seconds: float = 30.0,
        rng: random.Random | None = None,
        connect_timeout_seconds: float = 10.0,
        on_connection_change: Callable[[bool], None] | None = None,
    ) -> None:
        """``birth_payload``: published retained to ``will_topic`` at every connect
        (e.g. ``online``), so the will's ``offline`` is overwritten on return.
        ``on_connection_change(up)``: called on every connect (True) and drop (False)."""
        if config.tls is None and not config.is_loopback and not config.allow_insecure:
            raise InsecureConnectionError(
                f"mqtt.host {config.host!r} is not loopback and mqtt.tls is not set: refusing "
                "a plaintext connection (add [mqtt.tls] or set mqtt.allow_insecure = true)"
            )
        for topic in handlers:
            if "+" in topic or "#" in topic:
                raise ValueError(f"handler topic {topic!r} must be exact (no + or #)")
        if config.credentials_file is not None:
            read_password(config.credentials_file)  # fail now, clearly, rather than at connect
        self.config = config
        self.will_topic = will_topic
        self.will_payload = _as_bytes(will_payload)
        self.birth_payload = None if birth_payload is None else _as_bytes(birth_payload)
        self.handlers: dict[str, MessageHandler] = dict(handlers)
        self.clock = clock
        self.backoff_initial_seconds = backoff_initial_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.connect_timeout_seconds = connect_timeout_seconds
        self.on_connection_change = on_connection_change
        self._rng = rng or random.Random()
        self._client: aiomqtt.Client | None = None
        self._pending: dict[str, _Pending] = {}
        self._connected_event = asyncio.Event()
        self.connect_count = 0  # successful connects so far
        self.failure_count = 0  # failed connects and disconnects so far
        self.messages_received = 0
        self._inbox: asyncio.Queue[aiomqtt.Message] | None = None
        self._log = structlog.get_logger("hashgov.mqtt").bind(
            host=config.host, port=config.port, client_id=config.client_id
        )

    # -------------------------------------------------------------- state

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def wait_connected(self) -> None:
        await self._connected_event.wait()

    @property
    def pending_topics(self) -> list[str]:
        return sorted(self._pending)

    def backoff_seconds(self, failures: int) -> float:
        """Delay before retry number ``failures`` (1-based): capped doubling, 50–100 % jitter."""
        doubling = 2.0 ** min(max(0, failures - 1), 60)
        base = min(self.backoff_max_seconds, self.backoff_initial_seconds * doubling)
        return base * (0.5 + 0.5 * self._rng.random())

    # ------------------------------------------------------------ connect

    def _make_client(self) -> aiomqtt.Client:
        will = aiomqtt.Will(self.will_topic, self.will_payload, qos=1, retain=True)
        link = self

        class Inbox(asyncio.Queue[aiomqtt.Message]):
            """aiomqtt's incoming queue, kept by the link so it can drain it."""

            def __init__(self, maxsize: int = 0) -> None:
                super().__init__(maxsize)
                link._inbox = self

        return aiomqtt.Client(
            **client_options(self.config, will=will, timeout_seconds=self.connect_timeout_seconds),
            queue_type=Inbox,
        )

    async def _drain_inbox(self) -> None:
        """Dispatch every message already queued. aiomqtt hands over one message per
        few event-loop turns; on a loop busy with thousands of miners that is slower
        than the plant publishes, and the backlog would age until the budget goes
        stale. Draining per wake-up keeps pace with what paho reads."""
        inbox = self._inbox
        while inbox is not None and not inbox.empty():
            await self._dispatch(inbox.get_nowait())

    async def run(self) -> None:
        """Stay connected until cancelled."""
        failures = 0
        while True:
            try:
                client = self._make_client()
                async with client:
                    failures = 0
                    await self._on_connected(client)
                    async for message in client.messages:
                        await self._dispatch(message)
                        await self._drain_inbox()
                # the message stream ended without an error: treat as a disconnect
                raise aiomqtt.MqttError("message stream ended")
            except (aiomqtt.MqttError, OSError, CredentialsError) as exc:
                was_connected = self._client is not None
                self._set_down()
                failures += 1
                self.failure_count += 1
                delay = self.backoff_seconds(failures)
                self._log.warning(
                    "mqtt_disconnected" if was_connected else "mqtt_connect_failed",
                    error=str(exc) or type(exc).__name__,
                    attempt=failures,
                    retry_in_seconds=round(delay, 2),
                )
                await self.clock.sleep(delay)
            finally:
                self._set_down()

    def _set_down(self) -> None:
        announced = self._connected_event.is_set()
        self._client = None
        self._connected_event.clear()
        if announced and self.on_connection_change is not None:
            self.on_connection_change(False)

    async def _on_connected(self, client: aiomqtt.Client) -> None:
        for topic in self.handlers:
            await client.subscribe(topic, qos=1)
        self._client = client
        self.connect_count += 1
        self._log.info(
            "mqtt_connected",
            tls=self.config.tls is not None,
            username=self.config.username,
            subscriptions=len(self.handlers),
            connects=self.connect_count,
        )
        if self.birth_payload is not None:
            await client.publish(self.will_topic, self.birth_payload, qos=1, retain=True)
        pending, self._pending = self._pending, {}
        for topic, item in pending.items():
            await client.publish(topic, item.payload, qos=item.qos, retain=item.retain)
        self._connected_event.set()
        if self.on_connection_change is not None:
            self.on_connection_change(True)

    async def _dispatch(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        handler = self.handlers.get(topic)
        if handler is None:
            return
        self.messages_received += 1
        received_wall = self.clock.wall()
        received_mono = self.clock.monotonic()
        try:
            result: Any = handler(topic, _as_bytes(message.payload), received_wall, received_mono)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:  # a bad handler must not take the link down
            self._log.error("mqtt_handler_failed", topic=topic, error=repr(exc))

    # ------------------------------------------------------------ publish

    async def publish(
        self,
        topic: str,
        payload: bytes | str,
        retain: bool = False,
        qos: int = 1,
        timeout_seconds: float = 10.0,
    ) -> bool:
        """Publish now if connected (True); otherwise keep the latest per topic for the
        next connect (False). Never raises for a connection problem."""
        data = _as_bytes(payload)
        client = self._client
        if client is not None:
            try:
                await client.publish(topic, data, qos=qos, retain=retain, timeout=timeout_seconds)
                return True
            except aiomqtt.MqttError as exc:
                self._log.warning("mqtt_publish_failed", topic=topic, error=str(exc))
        self._pending[topic] = _Pending(data, retain, qos)
        return False
