"""Secrets never shown; plaintext to a remote broker refused; metrics on loopback.

A whole site runs WITH secrets: mosquitto requires a password (hashed password
file, anonymous refused), the daemon reads its MQTT password from
mqtt.credentials_file and the Braiins OS password from fleet.credentials_file.
Every text an operator or an attacker could see — all log output at debug level
(third-party loggers included), /metrics, the retained status message, the
`hashgov status` CLI output, the exception of a refused login, the broker's own
log — is searched for the secret strings. None may appear.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import aiomqtt
import pytest

from controller.clock import SystemClock
from controller.config import EX_CONFIG, MqttConfig, StreamConfig, load_config
from controller.logs import clear_secrets, configure_logging
from controller.mqtt_link import InsecureConnectionError, MqttLink
from drivers.pyasic_driver import import_pyasic
from simulators.broker import make_password_file
from simulators.miners.testing import eventually
from tests.support.site import running_site

ROOT = Path(__file__).resolve().parents[2]

MQTT_SECRET = "mqtt-Pw-7f3Qx9Lk2Zr"
FEEDER_SECRET = "feeder-Pw-Hh41Vc08Ne"
MINER_SECRET = "boser-Pw-Tq52Wm7Yd3"
WRONG_SECRET = "wrong-Pw-Zz99Aa11Bb"
SECRETS = (MQTT_SECRET, FEEDER_SECRET, MINER_SECRET, WRONG_SECRET)


def assert_no_secret(where: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"secret {secret[:6]}… shown in {where}"


def _with_secrets(mqtt_file: Path, miner_file: Path) -> object:
    def edit(text: str) -> str:
        text = text.replace(
            "[mqtt]\n", f'[mqtt]\nusername = "hashgov"\ncredentials_file = "{mqtt_file}"\n', 1
        )
        return text.replace("[fleet]\n", f'[fleet]\ncredentials_file = "{miner_file}"\n', 1)

    return edit


async def test_secrets_never_appear_in_logs_metrics_status_or_errors(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    passwd = make_password_file(
        secrets_dir / "mosquitto.passwd", {"hashgov": MQTT_SECRET, "feeder": FEEDER_SECRET}
    )
    mqtt_file = secrets_dir / "mqtt-password"
    mqtt_file.write_text(MQTT_SECRET + "\n")
    miner_file = secrets_dir / "miner-credentials.toml"
    miner_file.write_text(f'[braiins]\nusername = "root"\npassword = "{MINER_SECRET}"\n')
    wrong_file = secrets_dir / "wrong-password"
    wrong_file.write_text(WRONG_SECRET + "\n")

    log_path = tmp_path / "daemon.log"
    log_stream = log_path.open("w")
    # pyasic's import resets the root logger to WARNING; the simulated BOSer miners
    # import it in this process, so import it before configuring (the daemon itself is
    # protected by drivers.pyasic_driver.import_pyasic)
    import_pyasic()
    import simulators.miners.boser  # noqa: F401
    configure_logging("json", "debug", stream=log_stream)  # everything, pyasic/aiomqtt too
    texts: dict[str, str] = {}
    try:
        async with running_site(
            tmp_path,
            base_ip="127.31.0.1",
            count=3,
            surplus_kw=6.0,
            broker_conf=f"password_file {passwd}\nallow_anonymous false\n",
            feeder_username="feeder",
            feeder_password=FEEDER_SECRET,
            edit_config=_with_secrets(mqtt_file, miner_file),  # type: ignore[arg-type]
        ) as site:
            service = site.service
            assert service.config.mqtt.username == "hashgov"
            # the secrets really are in use: the daemon logged in, miners got the password
            assert service.link.connect_count >= 1
            braiins = [d for d in service.drivers.values() if d.firmware.value == "braiins"]
            assert braiins
            pyasic_miner = await braiins[0].pyasic_miner()  # type: ignore[attr-defined]
            assert pyasic_miner.web.pwd == MINER_SECRET
            await eventually(
                lambda: service.last_status is not None, timeout_seconds=10, what="status"
            )

            # anonymous clients are refused by this broker (the password file is in force)
            with pytest.raises(aiomqtt.MqttError):
                async with aiomqtt.Client(site.broker.host, site.broker.port, identifier="anon") as c:
                    await c.subscribe("hashgov/status")
                    async with asyncio.timeout(2):
                        async for _ in c.messages:
                            break

            # a failing connect with a wrong password: the exception text ...
            try:
                async with aiomqtt.Client(
                    site.broker.host, site.broker.port, identifier="wrong",
                    username="hashgov", password=WRONG_SECRET,
                ):
                    pass
            except aiomqtt.MqttError as exc:
                texts["refused login exception"] = f"{exc!s} {exc!r}"
            else:
                pytest.fail("a wrong password was accepted")
            # ... and the daemon's own link, logging its failed connects
            wrong_cfg = service.config.mqtt.model_copy(
                update={"credentials_file": wrong_file, "client_id": "hashgov-wrong"}
            )
            link = MqttLink(wrong_cfg, will_topic="hashgov/wrong", handlers={}, clock=SystemClock(),
                            backoff_initial_seconds=0.05, backoff_max_seconds=0.1)
            task = asyncio.ensure_future(link.run())
            await eventually(lambda: link.failure_count >= 2, timeout_seconds=10, what="refused")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert link.connect_count == 0

            # /metrics over HTTP
            port = service.metrics_port
            assert port is not None

            def get() -> str:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    return str(r.read().decode())

            texts["/metrics"] = await asyncio.to_thread(get)
            # the metrics endpoint is bound to loopback (the config default)
            server = service.metrics._server
            assert server is not None
            for sock in server.sockets:
                assert ipaddress.ip_address(sock.getsockname()[0]).is_loopback

            # the retained status message, as an operator reads it
            async with aiomqtt.Client(
                site.broker.host, site.broker.port, identifier="reader",
                username="feeder", password=FEEDER_SECRET,
            ) as client:
                await client.subscribe("hashgov/status", qos=1)
                async with asyncio.timeout(10):
                    async for message in client.messages:
                        texts["retained status"] = bytes(message.payload).decode()  # type: ignore[arg-type]
                        break
            assert json.loads(texts["retained status"])["state"] == "online"
            texts["status document"] = json.dumps(service.last_status)

            # `hashgov status --json` (reads the same credentials file)
            def cli_status() -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    [sys.executable, "-m", "controller.cli", "status", "--config",
                     str(site.config_path), "--json"],
                    capture_output=True, text=True, cwd=ROOT, timeout=60,
                )

            result = await asyncio.to_thread(cli_status)
            assert result.returncode == 0, result.stderr
            texts["hashgov status"] = result.stdout + result.stderr
            texts["broker log"] = site.broker.log_text()
    finally:
        configure_logging("console", "warning", stream=sys.stderr)
        log_stream.close()
        clear_secrets()

    texts["daemon log"] = log_path.read_text()
    assert "mqtt_connect_failed" in texts["daemon log"], "the refused login was logged"
    assert len(texts["daemon log"].splitlines()) > 20, "debug logging captured"
    for where, text in texts.items():
        assert_no_secret(where, text)


# --------------------------------------------------------------- transport policy


def _streams() -> dict[str, StreamConfig]:
    return {"surplus": StreamConfig(kind="surplus", topic="plant/surplus")}


@pytest.mark.parametrize("host", ["10.1.2.3", "192.0.2.10", "broker.example.net", "::ffff:8.8.8.8"])
def test_plaintext_to_a_remote_broker_is_refused_unless_allowed(host: str) -> None:
    refused = MqttConfig(host=host, streams=_streams())
    with pytest.raises(InsecureConnectionError, match="allow_insecure"):
        MqttLink(refused, will_topic="t", handlers={}, clock=SystemClock())
    allowed = MqttConfig(host=host, streams=_streams(), allow_insecure=True)
    MqttLink(allowed, will_topic="t", handlers={}, clock=SystemClock())  # constructs


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.9.9.9"])
def test_plaintext_to_loopback_is_fine(host: str) -> None:
    MqttLink(MqttConfig(host=host, streams=_streams()), will_topic="t", handlers={},
             clock=SystemClock())


def test_metrics_listen_defaults_to_loopback(tmp_path: Path) -> None:
    example = (ROOT / "deploy" / "hashgov.example.toml").read_text()
    head, _, _ = example.partition("[metrics]")
    path = tmp_path / "no-metrics-table.toml"
    path.write_text(head)
    config = load_config(path)
    assert ipaddress.ip_address(config.metrics.listen).is_loopback


def test_daemon_exits_78_for_plaintext_to_a_remote_broker(tmp_path: Path) -> None:
    example = (ROOT / "deploy" / "hashgov.example.toml").read_text()
    text = example.replace('host = "127.0.0.1"', 'host = "192.0.2.10"', 1)
    text = text.replace('state_dir = "/var/lib/hashgov"', f'state_dir = "{tmp_path / "state"}"')
    text = text.replace("port = 9687", "port = 0")
    assert 'host = "192.0.2.10"' in text and "allow_insecure = false" in text
    path = tmp_path / "remote-plaintext.toml"
    path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "controller.cli", "run", "--config", str(path)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert result.returncode == EX_CONFIG, (result.returncode, result.stderr[-2000:])
    out = result.stdout + result.stderr
    assert "config_refused" in out and "allow_insecure" in out


def test_building_drivers_keeps_the_configured_log_level() -> None:
    """pyasic's import sets the root logger to WARNING; `hashgov run` configures logging
    before it builds drivers, so info/debug lines (and with them any redaction check
    on them) were silently lost. Building a driver must keep the configured level."""
    code = (
        "import logging\n"
        "from controller.logs import configure_logging\n"
        "configure_logging('json', 'debug')\n"
        "from drivers.pyasic_driver import pyasic_class_for\n"
        "assert pyasic_class_for('Antminer S21', 'braiins') is not None\n"
        "print(logging.getLogger().level)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(10)
