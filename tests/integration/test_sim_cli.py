"""`hashgov sim miners` as a process: start, serve pyasic, stop cleanly; bad arguments."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path

import pyasic
import pytest

from controller.config import MinerConfig, load_inventory

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-c", "from controller.cli import main; main()", "sim", "miners"]


async def test_runs_until_sigterm_and_writes_inventory(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.toml"
    proc = await asyncio.create_subprocess_exec(
        *CLI, "--count", "3", "--mix", "Antminer S19j Pro:luxos:2,Antminer S21:braiins:1",
        "--base-ip", "127.1.104.1", "--time-scale", "10", "--admin-port", "0",
        "--inventory-out", str(inventory),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=20)).decode()
        assert "3 miners" in line and "127.1.104.1..127.1.104.3" in line
        assert re.search(r"http://127\.0\.0\.1:\d+/miners", line)
        miners = [MinerConfig.model_validate(m) for m in load_inventory(inventory)]
        assert [(m.address, m.firmware) for m in miners] == [
            ("127.1.104.1", "luxos"), ("127.1.104.2", "luxos"), ("127.1.104.3", "braiins")
        ]
        found = await pyasic.get_miner("127.1.104.3")
        assert found is not None and type(found).__name__ == "BOSMinerS21"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=10)
    assert proc.returncode == 0, stderr.decode()


@pytest.mark.parametrize(
    ("args", "argument"),
    [
        (["--mix", "Antminer S99:luxos:1"], "--mix"),
        (["--mix", "Antminer S21:vnish:1"], "--mix"),
        (["--mix", "garbage"], "--mix"),
        (["--base-ip", "10.0.0.1"], "--base-ip"),
        (["--base-ip", "not-an-ip"], "--base-ip"),
        (["--inventory", "/nonexistent/inventory.toml"], "--inventory"),
        (["--inventory", str(Path(__file__))], "--inventory"),  # not TOML
    ],
)
def test_bad_arguments_exit_2_without_traceback(args: list[str], argument: str) -> None:
    result = subprocess.run([*CLI, "--count", "2", *args], capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 2
    assert argument in result.stderr
    assert "Traceback" not in result.stderr
