"""deploy/install.sh in a throwaway root: layout, permissions, idempotence, uninstall.

The venv (network) and the system user (root, host-wide) are the only steps left out
(--no-venv --skip-user); everything else runs as it would on a site.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "install.sh"

pytestmark = pytest.mark.integration


def _run(prefix: Path, *args: str, path_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if path_dir is not None:
        env["PATH"] = f"{path_dir}:{env['PATH']}"
    return subprocess.run(
        ["bash", str(SCRIPT), "--prefix", str(prefix), "--no-venv", "--skip-user", *args],
        capture_output=True, text=True, timeout=120, env=env,
    )


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def spy_systemctl(tmp_path: Path) -> tuple[Path, Path]:
    """A systemctl on PATH that records any call: a throwaway root must never reach it."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "systemctl.log"
    spy = bindir / "systemctl"
    spy.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    spy.chmod(0o755)
    return bindir, log


def test_install_layout_and_permissions(tmp_path: Path, spy_systemctl: tuple[Path, Path]) -> None:
    root = tmp_path / "root"
    bindir, log = spy_systemctl
    proc = _run(root, path_dir=bindir)
    assert proc.returncode == 0, proc.stderr
    etc = root / "etc" / "hashgov"
    unit = root / "etc" / "systemd" / "system" / "hashgov.service"
    assert unit.read_text() == (ROOT / "deploy" / "systemd" / "hashgov.service").read_text()
    assert _mode(unit) == 0o644
    assert (etc / "hashgov.toml").read_text() == (ROOT / "deploy" / "hashgov.example.toml").read_text()
    assert _mode(etc) == 0o750
    assert _mode(etc / "hashgov.toml") == 0o640
    creds = etc / "credentials"
    assert _mode(creds) == 0o700
    for name in ("mqtt-password", "miner-password"):
        assert _mode(creds / name) == 0o600
        assert (creds / name).stat().st_size == 0
    opt = root / "opt" / "hashgov"
    assert (opt / "docs" / "operations.md").is_file()
    assert (opt / "share" / "prometheus" / "hashgov.rules.yml").is_file()
    assert os.access(opt / "share" / "mosquitto" / "make-certs.sh", os.X_OK)
    assert not (opt / "venv").exists()  # --no-venv
    assert not log.exists(), "systemctl must not be called for a --prefix install"


def test_rerun_is_idempotent_and_keeps_operator_files(
    tmp_path: Path, spy_systemctl: tuple[Path, Path]
) -> None:
    root = tmp_path / "root"
    bindir, log = spy_systemctl
    assert _run(root, path_dir=bindir).returncode == 0
    etc = root / "etc" / "hashgov"
    unit = root / "etc" / "systemd" / "system" / "hashgov.service"
    (etc / "hashgov.toml").write_text("# edited by the operator\n")
    (etc / "credentials" / "mqtt-password").write_text("s3cret\n")
    (etc / "credentials" / "mqtt-password").chmod(0o644)  # someone loosened it
    unit.write_text("stale unit from an older release\n")
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*"))

    proc = _run(root, path_dir=bindir)
    assert proc.returncode == 0, proc.stderr
    assert (etc / "hashgov.toml").read_text() == "# edited by the operator\n"
    assert (etc / "credentials" / "mqtt-password").read_text() == "s3cret\n"
    assert _mode(etc / "credentials" / "mqtt-password") == 0o600  # tightened again
    assert unit.read_text() == (ROOT / "deploy" / "systemd" / "hashgov.service").read_text()
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == before
    assert not log.exists()


def test_uninstall_removes_program_keeps_config_and_data(
    tmp_path: Path, spy_systemctl: tuple[Path, Path]
) -> None:
    root = tmp_path / "root"
    bindir, log = spy_systemctl
    assert _run(root, path_dir=bindir).returncode == 0
    data = root / "var" / "lib" / "hashgov"
    data.mkdir(parents=True)
    (data / "overrides.json").write_text("{}")
    (root / "etc" / "hashgov" / "credentials" / "miner-password").write_text("pw")

    proc = _run(root, "--uninstall", path_dir=bindir)
    assert proc.returncode == 0, proc.stderr
    assert not (root / "opt" / "hashgov").exists()
    assert not (root / "etc" / "systemd" / "system" / "hashgov.service").exists()
    assert (root / "etc" / "hashgov" / "hashgov.toml").is_file()
    assert (root / "etc" / "hashgov" / "credentials" / "miner-password").read_text() == "pw"
    assert (data / "overrides.json").is_file()
    # again: nothing left to remove, still fine
    assert _run(root, "--uninstall", path_dir=bindir).returncode == 0
    assert not log.exists()


def test_bad_usage(tmp_path: Path) -> None:
    proc = _run(tmp_path / "root", "--frobnicate")
    assert proc.returncode != 0
    assert "unknown option" in proc.stderr
    help_proc = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True,
                               timeout=30)
    assert help_proc.returncode == 0
    assert "--uninstall" in help_proc.stdout and "--prefix" in help_proc.stdout


def test_script_parses_and_is_executable() -> None:
    assert os.access(SCRIPT, os.X_OK)
    assert subprocess.run(["bash", "-n", str(SCRIPT)], timeout=30).returncode == 0
