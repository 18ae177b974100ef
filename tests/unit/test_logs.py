"""controller.logs: format choice, JSON lines, and secrets that never reach the output."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from controller.logs import (
    OncePerKey,
    clear_secrets,
    configure_logging,
    get_logger,
    register_secret,
    resolve_format,
)

SECRET = "hunter2-Zq8!mqtt"


class TtyIO(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    clear_secrets()
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_hashgov_handler", False):
            root.removeHandler(h)
    structlog.reset_defaults()


def _lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def test_auto_format_choice() -> None:
    assert resolve_format("auto", TtyIO(), {}) == "console"
    assert resolve_format("auto", io.StringIO(), {}) == "json"
    assert resolve_format("auto", TtyIO(), {"JOURNAL_STREAM": "8:1234"}) == "json"
    assert resolve_format("auto", TtyIO(), {"INVOCATION_ID": "abc"}) == "json"
    assert resolve_format("console", io.StringIO(), {"JOURNAL_STREAM": "8:1"}) == "console"
    assert resolve_format("json", TtyIO(), {}) == "json"


def test_json_lines_with_event_level_and_keys() -> None:
    buf = io.StringIO()
    assert configure_logging("auto", "info", stream=buf, environ={}) == "json"
    log = get_logger("telemetry")
    log.info("telemetry_rejected", stream="surplus", reason="nan")
    log.debug("not_shown")
    logging.getLogger("aiomqtt").warning("foreign %s message", "stdlib")
    lines = _lines(buf)
    assert len(lines) == 2
    first = lines[0]
    assert first["event"] == "telemetry_rejected"
    assert first["level"] == "info"
    assert first["component"] == "telemetry"
    assert first["stream"] == "surplus" and first["reason"] == "nan"
    assert "timestamp" in first
    assert lines[1]["event"] == "foreign stdlib message"
    assert lines[1]["logger"] == "aiomqtt"


def test_registered_secret_never_appears_in_json_output() -> None:
    buf = io.StringIO()
    configure_logging("json", "debug", stream=buf)
    register_secret(SECRET + "\n")  # as read from a credential file
    log = get_logger("service")
    log.info("mqtt_connecting", password=SECRET, mqtt_token="abc", credentials_file="/run/c/p")
    log.info("config_loaded", detail=f"connect with {SECRET} now",
             nested={"inner": [SECRET, {"deep": SECRET}]}, raw=SECRET.encode())
    log.info("broker_url", url="mqtts://hashgov:other-pw@broker:8883")
    try:
        raise RuntimeError(f"auth failed for {SECRET}")
    except RuntimeError:
        log.exception("mqtt_connect_failed")
    logging.getLogger("pyasic").error("login with %s failed", SECRET)
    out = buf.getvalue()
    assert SECRET not in out
    assert "other-pw" not in out
    lines = _lines(buf)
    assert lines[0]["password"] == "***"
    assert lines[0]["mqtt_token"] == "***"
    assert lines[0]["credentials_file"] == "/run/c/p"  # a path is not a secret
    assert lines[1]["detail"] == "connect with *** now"
    assert lines[1]["nested"] == {"inner": ["***", {"deep": "***"}]}
    assert lines[2]["url"] == "mqtts://hashgov:***@broker:8883"
    assert "RuntimeError" in lines[3]["exception"] and "***" in lines[3]["exception"]
    assert lines[4]["event"] == "login with *** failed"


def test_secret_redacted_in_console_output_too() -> None:
    buf = TtyIO()
    assert configure_logging("auto", "info", stream=buf, environ={}) == "console"
    register_secret(SECRET)
    get_logger("service").warning("miner_login_failed", miner="row1-01", detail=SECRET)
    out = buf.getvalue()
    assert "miner_login_failed" in out and "row1-01" in out
    assert SECRET not in out


def test_reconfigure_replaces_handler() -> None:
    a, b = io.StringIO(), io.StringIO()
    configure_logging("json", "info", stream=a)
    configure_logging("json", "warning", stream=b)
    get_logger("x").info("dropped")
    get_logger("x").warning("kept")
    assert a.getvalue() == ""
    assert [line["event"] for line in _lines(b)] == ["kept"]


def test_once_per_key() -> None:
    once = OncePerKey(max_keys=2)
    assert once.first(("surplus", "nan"))
    assert not once.first(("surplus", "nan"))
    once.reset(("surplus", "nan"))
    assert once.first(("surplus", "nan"))
    assert once.first("b") and once.first("c")  # evicts the oldest
    assert once.first(("surplus", "nan"))


def test_pyasic_import_cannot_silence_info_events() -> None:
    """pyasic calls logging.basicConfig and sets the root to WARNING on first import;
    in a fresh process (pyasic not yet imported) configure first, import pyasic after,
    as the daemon does: info events must still come out, in our format only."""
    import subprocess
    import sys

    code = (
        "import io, logging, structlog\n"
        "from controller.logs import configure_logging\n"
        "buf = io.StringIO()\n"
        "configure_logging('json', 'info', stream=buf)\n"
        "import pyasic\n"
        "structlog.get_logger('t').info('still_heard')\n"
        "print(buf.getvalue().strip())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert '"event": "still_heard"' in result.stdout, result.stdout + result.stderr
