"""MosquittoBroker: start, restart on the same port, kill, config, missing binary."""

from __future__ import annotations

from pathlib import Path

import aiomqtt
import pytest

from simulators.broker import (
    BrokerError,
    BrokerNotInstalled,
    MosquittoBroker,
    find_mosquitto,
    start_broker,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed"),
]


async def test_lifecycle_same_port(tmp_path: Path) -> None:
    broker = MosquittoBroker(workdir=tmp_path)
    port = broker.port
    async with broker:
        assert broker.running and "listener" in broker.conf_path.read_text()
        async with aiomqtt.Client(broker.host, broker.port):
            pass
        await broker.kill()
        assert not broker.running
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(broker.host, broker.port, timeout=2):
                pass
        await broker.restart()
        assert broker.port == port and broker.running
        async with aiomqtt.Client(broker.host, broker.port):
            pass
    assert not broker.running
    assert "mosquitto version" in broker.log_text()


async def test_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("simulators.broker.find_mosquitto", lambda: None)
    with pytest.raises(BrokerNotInstalled, match="apt-get install mosquitto"):
        MosquittoBroker()


async def test_bad_extra_conf_fails_start(tmp_path: Path) -> None:
    broker = MosquittoBroker(workdir=tmp_path, extra_conf="no_such_option 1")
    with pytest.raises(BrokerError, match="exited"):
        await broker.start()


async def test_start_broker_helper() -> None:
    broker = await start_broker()
    try:
        async with aiomqtt.Client(broker.host, broker.port):
            pass
    finally:
        await broker.stop()
