"""deploy/mosquitto: a real mosquitto on the site config (TLS listener, passwords, ACL)
with certificates from make-certs.sh. Identities get what the ACL grants, nothing more."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "mosquitto"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
PASSWD = shutil.which("mosquitto_passwd")
PASSWORDS = {"hashgov": "hg-Secret-1", "plant": "plant-Secret-2", "operator": "op-Secret-3"}

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path(MOSQUITTO).exists() or PASSWD is None,
                       reason="needs mosquitto and mosquitto_passwd"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl"),
]


@dataclass(frozen=True)
class SiteBroker:
    port: int
    ca_file: Path
    certs: Path
    log: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _site_conf(tmp: Path, port: int, certs: Path) -> str:
    """The deploy config with its listener on a free loopback port and files under tmp."""
    text = (DEPLOY / "mosquitto.conf").read_text()
    replacements = {
        "listener 8883\n": f"listener {port} 127.0.0.1\n",
        "/etc/mosquitto/hashgov/tls/": f"{certs}/",
        "/etc/mosquitto/hashgov/passwd": str(tmp / "passwd"),
        "/etc/mosquitto/hashgov/acl": str(DEPLOY / "acl"),
    }
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    # run as whoever runs the tests (as root, mosquitto would switch to "mosquitto")
    return text + f"\nuser {getpass.getuser()}\nlog_dest file {tmp / 'mosquitto.log'}\n"


@pytest.fixture(scope="module")
def site_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiteBroker]:
    tmp = tmp_path_factory.mktemp("site-broker")
    certs = tmp / "tls"
    subprocess.run([str(DEPLOY / "make-certs.sh"), str(certs)], check=True,
                   capture_output=True, timeout=60)
    assert PASSWD is not None
    for i, (user, password) in enumerate(PASSWORDS.items()):
        args = [PASSWD, "-b", *(["-c"] if i == 0 else []), str(tmp / "passwd"), user, password]
        subprocess.run(args, check=True, capture_output=True, timeout=30)
    port = _free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(_site_conf(tmp, port, certs))
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = proc.stdout.read().decode() if proc.stdout else ""
                    log = (tmp / "mosquitto.log").read_text() if (tmp / "mosquitto.log").exists() else ""
                    pytest.fail(f"mosquitto did not start: {out}\n{log}")
                time.sleep(0.05)
        yield SiteBroker(port=port, ca_file=certs / "ca.crt", certs=certs, log=tmp / "mosquitto.log")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tls(broker: SiteBroker) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(broker.ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx  # check_hostname stays on: the broker cert has IP:127.0.0.1 in its SANs


def _client(broker: SiteBroker, user: str | None, password: str | None = None,
            tls: ssl.SSLContext | None = None) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1", broker.port, username=user,
        password=PASSWORDS.get(user or "") if password is None else password,
        tls_context=_tls(broker) if tls is None else tls,
        identifier=f"test-{user}-{uuid.uuid4().hex[:8]}", timeout=5,
    )


@contextlib.asynccontextmanager
async def _subscribed(broker: SiteBroker, user: str, *topics: str) -> AsyncIterator[aiomqtt.Client]:
    async with _client(broker, user) as client:
        for topic in topics:
            await client.subscribe(topic, qos=1)
        yield client


async def _next_payload(client: aiomqtt.Client) -> tuple[str, bytes]:
    async with asyncio.timeout(10):
        async for message in client.messages:
            payload = message.payload
            assert isinstance(payload, bytes)
            return str(message.topic), payload
    raise AssertionError("message stream ended")


async def test_hashgov_connects_over_tls_and_receives_plant_telemetry(site_broker: SiteBroker) -> None:
    async with (
        _subscribed(site_broker, "hashgov", "plant/#", "site/#") as hashgov,
        _client(site_broker, "plant") as plant,
    ):
        await plant.publish("plant/surplus", b'{"surplus_kw": 42}', qos=1)
        assert await _next_payload(hashgov) == ("plant/surplus", b'{"surplus_kw": 42}')
        await plant.publish("site/meter", b'{"power_kw": 40}', qos=1)
        assert await _next_payload(hashgov) == ("site/meter", b'{"power_kw": 40}')


@pytest.mark.parametrize(
    ("user", "password"),
    [(None, None), ("hashgov", "wrong-password"), ("nobody", "whatever"), ("hashgov", "")],
    ids=["anonymous", "wrong-password", "unknown-user", "empty-password"],
)
async def test_refused_without_valid_credentials(
    site_broker: SiteBroker, user: str | None, password: str | None
) -> None:
    client = _client(site_broker, user, password if user else None)
    with pytest.raises(aiomqtt.MqttError):
        async with client:
            pass


@pytest.fixture
def other_ca(tmp_path: Path) -> Path:
    """The CA of some other site."""
    other = tmp_path / "other"
    subprocess.run([str(DEPLOY / "make-certs.sh"), str(other)], check=True,
                   capture_output=True, timeout=60, env={"CLIENTS": "", "PATH": "/usr/bin:/bin"})
    return other / "ca.crt"


async def test_plaintext_or_untrusted_tls_is_refused(site_broker: SiteBroker, other_ca: Path) -> None:
    plain = aiomqtt.Client("127.0.0.1", site_broker.port, username="hashgov",
                           password=PASSWORDS["hashgov"], timeout=1)
    with pytest.raises(aiomqtt.MqttError):
        async with plain:
            pass
    # a client that trusts some other CA does not accept the broker
    wrong_ca = ssl.create_default_context(cafile=str(other_ca))
    with pytest.raises(aiomqtt.MqttError):
        async with _client(site_broker, "hashgov", tls=wrong_ca):
            pass


async def test_plant_cannot_command_hashgov(site_broker: SiteBroker) -> None:
    """The plant identity's publish to hashgov/command is dropped; the operator's arrives."""
    async with _subscribed(site_broker, "hashgov", "hashgov/command") as hashgov:
        async with _client(site_broker, "plant") as plant:
            await plant.publish("hashgov/command", b'{"cmd": "forged-by-plant"}', qos=1)
        async with _client(site_broker, "hashgov") as self_publisher:
            await self_publisher.publish("hashgov/command", b'{"cmd": "forged-by-hashgov"}', qos=1)
        # both publishes were acknowledged before this one is sent: had either been routed,
        # it would be queued ahead of the operator's sentinel
        async with _client(site_broker, "operator") as operator:
            await operator.publish("hashgov/command", b'{"cmd": "sentinel"}', qos=1)
        assert await _next_payload(hashgov) == ("hashgov/command", b'{"cmd": "sentinel"}')


async def test_operator_cannot_fake_telemetry_or_status(site_broker: SiteBroker) -> None:
    async with _subscribed(site_broker, "hashgov", "plant/surplus") as hashgov, \
            _subscribed(site_broker, "operator", "hashgov/status", "hashgov/reply/#") as operator:
        await operator.publish("plant/surplus", b'{"surplus_kw": 99999}', qos=1)
        await operator.publish("hashgov/status", b'{"forged": true}', qos=1)
        async with _client(site_broker, "plant") as plant:
            await plant.publish("plant/surplus", b'{"surplus_kw": 1}', qos=1)
            # the plant cannot write hashgov's status either
            await plant.publish("hashgov/status", b'{"forged": "by plant"}', qos=1)
        assert await _next_payload(hashgov) == ("plant/surplus", b'{"surplus_kw": 1}')
        await hashgov.publish("hashgov/reply/op-1", b'{"ok": true}', qos=1)
        await hashgov.publish("hashgov/status", b'{"state": "online"}', qos=1)
        assert await _next_payload(operator) == ("hashgov/reply/op-1", b'{"ok": true}')
        assert await _next_payload(operator) == ("hashgov/status", b'{"state": "online"}')


async def test_plant_cannot_read_commands_or_status(site_broker: SiteBroker) -> None:
    """The plant may read nothing at all, so there is no sentinel it could receive:
    after the publishes are acknowledged, a short window must stay silent."""
    async with _subscribed(site_broker, "plant", "hashgov/#", "plant/#", "#") as plant:
        async with _client(site_broker, "operator") as operator:
            await operator.publish("hashgov/command", b'{"cmd": "secret-op"}', qos=1)
        async with _client(site_broker, "hashgov") as hashgov:
            await hashgov.publish("hashgov/status", b'{"state": "online"}', qos=1)
            await hashgov.publish("hashgov/reply/op-1", b'{"ok": true}', qos=1)
        await plant.publish("plant/surplus", b"own telemetry", qos=1)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):
                async for message in plant.messages:
                    raise AssertionError(f"plant received {message.topic}: {message.payload!r}")


async def test_hashgov_mqtt_link_uses_tls_and_its_credentials_file(site_broker: SiteBroker, tmp_path: Path) -> None:
    """The daemon's own connection code (not a hand-built client) on the site broker."""
    from controller.clock import SystemClock
    from controller.config import MqttConfig, StreamConfig, TlsConfig
    from controller.mqtt_link import MqttLink

    secret = tmp_path / "mqtt-password"
    secret.write_text(PASSWORDS["hashgov"] + "\n")
    config = MqttConfig(
        host="127.0.0.1",
        port=site_broker.port,
        username="hashgov",
        credentials_file=secret,
        tls=TlsConfig(ca_file=site_broker.ca_file),
        streams={"surplus": StreamConfig(kind="surplus", topic="plant/surplus")},
    )
    received: list[bytes] = []
    link = MqttLink(
        config,
        will_topic="hashgov/status",
        handlers={"plant/surplus": lambda topic, payload, wall, mono: received.append(payload)},
        clock=SystemClock(),
    )
    task = asyncio.ensure_future(link.run())
    try:
        await asyncio.wait_for(link.wait_connected(), 10)
        async with _client(site_broker, "plant") as plant:
            for _ in range(50):  # until the link's subscription is in place
                await plant.publish("plant/surplus", b"12.5", qos=1)
                if received:
                    break
                await asyncio.sleep(0.1)
        assert received and received[0] == b"12.5"
        assert await link.publish("hashgov/status", b'{"state": "online"}', retain=True)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
