"""A real MQTT broker for tests, simulators and the demo.

``MosquittoBroker`` runs ``mosquitto`` on a loopback port with its own config
file (no persistence, log to a file in its work directory). It is what every
integration test talks to: the daemon is tested against the broker it will meet
in production, not against a mock.

``start_broker()`` is the one entry point the demo should use; it starts
mosquitto, or the pure-Python ``simulators.embedded_broker.EmbeddedBroker``
(a demo fallback) on machines without mosquitto.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Literal, Protocol, Self

MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


class BrokerError(RuntimeError):
    """The broker could not be found, started or reached."""


class BrokerNotInstalled(BrokerError):
    pass


def find_mosquitto() -> str | None:
    """Path of the mosquitto executable, or None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in MOSQUITTO_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_for_port(host: str, port: int, timeout_seconds: float) -> None:
    """Return once (host, port) accepts a TCP connection; BrokerError after the timeout."""
    deadline = time.monotonic() + timeout_seconds
    last_error: OSError | None = None
    while time.monotonic() < deadline:
        try:
            _reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            last_error = exc
            await asyncio.sleep(0.02)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    raise BrokerError(f"broker on {host}:{port} did not accept connections: {last_error}")


class Broker(Protocol):
    """What tests and the demo need from any broker."""

    host: str
    port: int

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def kill(self) -> None: ...

    async def restart(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class MosquittoBroker:
    """A private mosquitto on a loopback port.

    ``extra_conf`` is appended to the generated config and applies to the
    listener (``per_listener_settings`` stays off), e.g. ``password_file ...``
    plus ``allow_anonymous false``. When it does not mention
    ``allow_anonymous``, anonymous clients are allowed.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        extra_conf: str = "",
        workdir: Path | None = None,
        host: str = "127.0.0.1",
        executable: str | None = None,
        start_timeout_seconds: float = 10.0,
    ) -> None:
        exe = executable or find_mosquitto()
        if exe is None:
            raise BrokerNotInstalled(
                "mosquitto is not installed (looked on PATH and in /usr/sbin); install it "
                "(apt-get install mosquitto) or use simulators.broker.start_broker(), which "
                "falls back to the embedded broker"
            )
        self.executable = exe
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.extra_conf = extra_conf
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(
            tempfile.mkdtemp(prefix="hashgov-mosquitto-")
        )
        self.start_timeout_seconds = start_timeout_seconds
        self._proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------- files

    @property
    def conf_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def render_conf(self) -> str:
        lines = [
            "# written by simulators.broker.MosquittoBroker",
            f"listener {self.port} {self.host}",
            "persistence false",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if os.geteuid() == 0:
            # as root mosquitto would switch to user 'mosquitto', who cannot write our log
            lines.append("user root")
        if "allow_anonymous" not in self.extra_conf:
            lines.append("allow_anonymous true")
        if self.extra_conf:
            lines.append(self.extra_conf.strip())
        return "\n".join(lines) + "\n"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ----------------------------------------------------------- process

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        """Start mosquitto and return once its port accepts connections."""
        if self.running:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.render_conf())
        # Popen returns at once (fork+exec); the readiness wait below is async
        self._proc = subprocess.Popen(  # noqa: ASYNC220
            [self.executable, "-c", str(self.conf_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + self.start_timeout_seconds
        while True:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise BrokerError(
                    f"mosquitto exited with {self._proc.returncode} at start on port {self.port}: "
                    f"{err.strip()} {self.log_text().strip()[-800:]}"
                )
            try:
                await wait_for_port(self.host, self.port, 0.2)
                return
            except BrokerError:
                if time.monotonic() > deadline:
                    await self.kill()
                    raise BrokerError(
                        f"mosquitto did not listen on {self.host}:{self.port} within "
                        f"{self.start_timeout_seconds} s; log: {self.log_text()[-800:]}"
                    ) from None

    async def _wait_exit(self, timeout_seconds: float) -> bool:
        proc = self._proc
        if proc is None:
            return True
        deadline = time.monotonic() + timeout_seconds
        while proc.poll() is None:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 5 s)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            if not await self._wait_exit(5.0):
                proc.kill()
                await self._wait_exit(5.0)
        self._close_pipes()

    async def kill(self) -> None:
        """SIGKILL: the broker vanishes without closing its connections cleanly."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            await self._wait_exit(5.0)
        self._close_pipes()

    async def restart(self) -> None:
        """Stop (if running) and start again on the same port."""
        await self.stop()
        await self.start()

    def _close_pipes(self) -> None:
        if self._proc is not None and self._proc.stderr is not None:
            self._proc.stderr.close()

    def cleanup(self) -> None:
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

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
        self.cleanup()


def make_password_file(path: Path, users: dict[str, str]) -> Path:
    """Write a mosquitto password file with mosquitto_passwd (hashed, never plaintext)."""
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        raise BrokerNotInstalled("mosquitto_passwd is not installed (it ships with mosquitto)")
    path.unlink(missing_ok=True)
    first = True
    for user, password in users.items():
        args = [tool, "-b"]
        if first:
            args.append("-c")
        subprocess.run([*args, str(path), user, password], check=True, capture_output=True)
        first = False
    if os.geteuid() == 0:
        path.chmod(0o600)
    return path


async def start_broker(
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    prefer: Literal["mosquitto", "embedded"] = "mosquitto",
) -> Broker:
    """Start and return a broker: mosquitto when installed, else the embedded one.

    ``prefer="embedded"`` uses the embedded pure-Python broker (a demo fallback,
    see simulators.embedded_broker) even when mosquitto is installed.
    """
    broker: Broker
    if prefer == "embedded" or find_mosquitto() is None:
        from simulators.embedded_broker import EmbeddedBroker  # imports this module

        broker = EmbeddedBroker(port=port, host=host)
    else:
        broker = MosquittoBroker(port=port, host=host)
    await broker.start()
    return broker
