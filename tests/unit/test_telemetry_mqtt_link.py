"""MqttLink construction rules and backoff (no broker needed)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from controller.clock import ManualClock
from controller.config import MqttConfig
from controller.mqtt_link import CredentialsError, InsecureConnectionError, MqttLink

STREAMS = {"s": {"kind": "surplus", "topic": "plant/surplus"}}


def link(**cfg: Any) -> MqttLink:
    return MqttLink(
        MqttConfig(streams=STREAMS, **cfg),
        will_topic="hashgov/status",
        handlers={"plant/surplus": lambda *a: None},
        clock=ManualClock(),
        rng=random.Random(1),
    )


def test_plaintext_to_remote_host_refused() -> None:
    with pytest.raises(InsecureConnectionError, match=r"10\.0\.0\.5.*mqtt\.tls"):
        link(host="10.0.0.5")


def test_plaintext_allowed_on_loopback_or_when_told(tmp_path: Path) -> None:
    assert not link(host="127.0.0.1").connected
    assert not link(host="localhost").connected
    assert not link(host="::1").connected
    assert not link(host="10.0.0.5", allow_insecure=True).connected
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    assert not link(host="broker.example", tls={"ca_file": ca}).connected


def test_wildcard_handler_refused() -> None:
    with pytest.raises(ValueError, match="exact"):
        MqttLink(
            MqttConfig(streams=STREAMS),
            will_topic="s",
            handlers={"plant/#": lambda *a: None},
            clock=ManualClock(),
        )


def test_unreadable_credentials_named_not_shown(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(CredentialsError, match="nope") as info:
        link(username="u", credentials_file=missing)
    assert "cannot be read" in str(info.value)


def test_backoff_doubles_caps_and_jitters() -> None:
    lk = link()
    delays = [lk.backoff_seconds(n) for n in range(1, 12)]
    for n, d in enumerate(delays, start=1):
        base = min(30.0, 0.5 * 2 ** (n - 1))
        assert base * 0.5 <= d <= base
    assert max(delays) <= 30.0
    assert lk.backoff_seconds(10_000) <= 30.0


async def test_publish_while_disconnected_keeps_latest_per_topic() -> None:
    lk = link()
    assert await lk.publish("a", b"1") is False
    assert await lk.publish("a", "2", retain=True) is False
    assert await lk.publish("b", b"x") is False
    assert lk.pending_topics == ["a", "b"]


async def test_queued_messages_are_handed_over_in_one_batch_in_order() -> None:
    """aiomqtt hands over one message per few event-loop turns. The I/O thread drains
    what is queued behind each message, stamps it on arrival, and the main loop runs
    the handlers for the whole batch in order."""
    got: list[tuple[bytes, float]] = []
    clock = ManualClock()
    lk = MqttLink(
        MqttConfig(streams=STREAMS),
        will_topic="hashgov/status",
        handlers={"plant/surplus": lambda topic, payload, wall, mono: got.append((payload, mono))},
        clock=clock,
    )
    lk._make_client()  # installs the inbox aiomqtt will queue into
    inbox = lk._inbox
    assert inbox is not None and inbox.empty()
    for i in range(1, 5):
        inbox.put_nowait(aiomqtt.Message("plant/surplus", str(i).encode(), 1, False, i, None))
    inbox.put_nowait(aiomqtt.Message("other/topic", b"ignored", 1, False, 9, None))
    first = aiomqtt.Message("plant/surplus", b"0", 1, False, 0, None)
    batch = lk._drain_after(first)
    assert inbox.empty()
    assert [item[1] for item in batch] == [b"0", b"1", b"2", b"3", b"4"]
    clock.advance(5.0)  # the main loop runs the batch later: stamps are from arrival
    lk._deliver(batch)
    assert got == [(str(i).encode(), 1_000.0) for i in range(5)]
    assert lk.messages_received == 5


async def test_a_failing_handler_is_logged_and_the_rest_of_the_batch_still_runs() -> None:
    got: list[bytes] = []

    def bad(topic: str, payload: bytes, wall: float, mono: float) -> None:
        raise RuntimeError("boom")

    lk = MqttLink(
        MqttConfig(streams=STREAMS),
        will_topic="hashgov/status",
        handlers={"a": bad, "b": lambda topic, payload, wall, mono: got.append(payload)},
        clock=ManualClock(),
    )
    lk._deliver([("a", b"1", 0.0, 0.0), ("b", b"2", 0.0, 0.0)])
    assert got == [b"2"]
