"""The daemon's one MQTT connection: subscribe, dispatch, publish, reconnect.

The connection lives on its own thread and event loop ("the I/O thread"): at
10,000 miners the main loop's turns grow long, and paho reads one MQTT packet
per turn, so on the main loop the plant's messages aged in the socket until the
budget went stale. Safety input is isolated from fleet I/O: the I/O thread
stamps each message when it arrives and hands batches to the main loop, where
the handlers run (they never run on the I/O thread).

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
import contextlib
import inspect
import random
import threading
from collections.abc import Awaitable, Callable, Mapping
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


# (topic, payload, received_wall, received_mono): stamped on the I/O thread
_Stamped = tuple[str, bytes, float, float]

# How long stopping waits for the I/O thread before giving up on it (it is a
# daemon thread: aiomqtt's exit waits for the broker's disconnect ack unbounded).
IO_STOP_WAIT_SECONDS = 5.0


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
        ``on_connection_change(up)``: called on the main loop on every connect (True)
        and drop (False). ``clock``: read on the I/O thread too (receive stamps,
        reconnect backoff), so it must be thread-safe there (SystemClock is)."""
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
        self._client: aiomqtt.Client | None = None  # set and cleared on the I/O thread
        # Guards _client and _pending together: a publish that finds no client must
        # queue before a connect takes the queue, or it waits for the next connect.
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._connected_event = asyncio.Event()  # main loop
        self._main_loop: asyncio.AbstractEventLoop | None = None
        self._io_loop: asyncio.AbstractEventLoop | None = None
        self._handler_tasks: set[asyncio.Future[Any]] = set()
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
        with self._lock:
            return sorted(self._pending)

    def backoff_seconds(self, failures: int) -> float:
        """Delay before retry number ``failures`` (1-based): capped doubling, 50–100 % jitter."""
        doubling = 2.0 ** min(max(0, failures - 1), 60)
        base = min(self.backoff_max_seconds, self.backoff_initial_seconds * doubling)
        return base * (0.5 + 0.5 * self._rng.random())

    # ------------------------------------------------------ the I/O thread

    async def run(self) -> None:
        """Stay connected until cancelled. The connection runs on its own thread;
        this coroutine only waits for it and stops it when cancelled."""
        main = asyncio.get_running_loop()
        self._main_loop = main
        finished: asyncio.Future[None] = main.create_future()
        started = threading.Event()
        io_task: list[asyncio.Task[None]] = []

        def thread_main() -> None:
            loop = asyncio.new_event_loop()
            self._io_loop = loop
            io_task.append(loop.create_task(self._run_io()))
            started.set()
            failure: BaseException | None = None
            try:
                loop.run_until_complete(io_task[0])
            except asyncio.CancelledError:  # stopped by run()'s caller
                pass
            except BaseException as exc:  # an unexpected error: run() raises it
                failure = exc
            finally:
                with self._lock:
                    self._io_loop = None
                loop.close()
                with contextlib.suppress(RuntimeError):  # the main loop closed first
                    main.call_soon_threadsafe(_settle, finished, failure)

        thread = threading.Thread(target=thread_main, name="hashgov-mqtt", daemon=True)
        thread.start()
        started.wait()  # microseconds: the thread only makes its loop and task
        try:
            await asyncio.shield(finished)
        finally:
            await self._stop_io(io_task[0], finished)

    async def _stop_io(self, task: asyncio.Task[None], finished: asyncio.Future[None]) -> None:
        """Cancel the I/O task (twice if its exit hangs on the broker) and wait, bounded."""
        for _ in range(2):
            io = self._io_loop
            if finished.done() or io is None:
                break
            try:
                io.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the I/O loop closed meanwhile
                break
            done, _pending = await asyncio.wait({finished}, timeout=IO_STOP_WAIT_SECONDS / 2)
            if done:
                break
        self._set_down()

    async def _run_io(self) -> None:
        failures = 0
        while True:
            try:
                client = self._make_client()
                async with client:
                    failures = 0
                    await self._on_connected(client)
                    async for message in client.messages:
                        self._hand_over(self._drain_after(message))
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

    def _drain_after(self, first: aiomqtt.Message) -> list[_Stamped]:
        """``first`` and every message already queued behind it, stamped now, in
        order: one hand-over to the main loop per batch, not per message."""
        batch: list[_Stamped] = []
        message: aiomqtt.Message | None = first
        inbox = self._inbox
        while message is not None:
            stamped = self._stamp(message)
            if stamped is not None:
                batch.append(stamped)
            message = inbox.get_nowait() if inbox is not None and not inbox.empty() else None
        return batch

    def _stamp(self, message: aiomqtt.Message) -> _Stamped | None:
        topic = message.topic.value
        if topic not in self.handlers:
            return None
        return (topic, _as_bytes(message.payload), self.clock.wall(), self.clock.monotonic())

    def _hand_over(self, batch: list[_Stamped]) -> None:
        main = self._main_loop
        if batch and main is not None:
            with contextlib.suppress(RuntimeError):  # the main loop closed meanwhile
                main.call_soon_threadsafe(self._deliver, batch)

    def _announce(self, up: bool) -> None:
        """Connection state to the main loop (the event and the callback live there)."""
        main = self._main_loop
        if main is None or main.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the main loop closed meanwhile
            main.call_soon_threadsafe(self._apply_connection_state, up)

    def _apply_connection_state(self, up: bool) -> None:
        if up == self._connected_event.is_set():
            return
        if up:
            self._connected_event.set()
        else:
            self._connected_event.clear()
        if self.on_connection_change is not None:
            self.on_connection_change(up)

    def _set_down(self) -> None:
        with self._lock:
            was_up = self._client is not None
            self._client = None
        if was_up:
            self._announce(False)

    async def _on_connected(self, client: aiomqtt.Client) -> None:
        for topic in self.handlers:
            await client.subscribe(topic, qos=1)
        with self._lock:
            self._client = client
            pending, self._pending = self._pending, {}
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
        for topic, item in pending.items():
            await client.publish(topic, item.payload, qos=item.qos, retain=item.retain)
        self._announce(True)

    # ---------------------------------------------------- the main loop

    def _deliver(self, batch: list[_Stamped]) -> None:
        """Run the handlers for one batch, in arrival order (main loop)."""
        for topic, payload, received_wall, received_mono in batch:
            handler = self.handlers.get(topic)
            if handler is None:
                continue
            self.messages_received += 1
            try:
                result: Any = handler(topic, payload, received_wall, received_mono)
            except Exception as exc:  # a bad handler must not take the link down
                self._log.error("mqtt_handler_failed", topic=topic, error=repr(exc))
                continue
            if inspect.isawaitable(result):
                self._track(topic, result)

    def _track(self, topic: str, result: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(result)
        self._handler_tasks.add(task)

        def done(t: asyncio.Future[Any]) -> None:
            self._handler_tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self._log.error("mqtt_handler_failed", topic=topic, error=repr(t.exception()))

        task.add_done_callback(done)

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
        with self._lock:
            client, io = self._client, self._io_loop
            if client is None or io is None:
                self._pending[topic] = _Pending(data, retain, qos)
                return False
        try:
            sent = asyncio.run_coroutine_threadsafe(
                client.publish(topic, data, qos=qos, retain=retain, timeout=timeout_seconds), io
            )
            # bounded even if the I/O loop stops with the publish still pending
            await asyncio.wait_for(asyncio.wrap_future(sent), timeout_seconds + 1.0)
            return True
        except (aiomqtt.MqttError, RuntimeError, TimeoutError) as exc:
            self._log.warning("mqtt_publish_failed", topic=topic, error=str(exc) or repr(exc))
        with self._lock:
            self._pending[topic] = _Pending(data, retain, qos)
        return False


def _settle(future: asyncio.Future[None], failure: BaseException | None) -> None:
    if future.done():
        return
    if failure is None:
        future.set_result(None)
    else:
        future.set_exception(failure)
