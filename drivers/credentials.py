"""Miner credentials: loaded once, held as opaque secrets, never logged.

The credentials file (``fleet.credentials_file``; systemd ``LoadCredential``
drops it in ``$CREDENTIALS_DIRECTORY``) is either

* a file holding a Braiins OS password alone (one line), or
* TOML::

    [braiins]                 # default for every Braiins OS (BOSer) miner
    username = "root"
    password = "..."

    [miners."10.0.0.17"]      # per-miner override, by address or name
    password = "..."

LuxOS needs no password (pyasic opens a session with ``logon``).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_USERNAME = "root"
REDACTED = "***"


class Secret:
    """A string that does not show itself: repr/str/format print ``***``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    def __str__(self) -> str:
        return REDACTED

    def __format__(self, format_spec: str) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> Any:
        raise TypeError("a Secret is not picklable")


@dataclass(frozen=True, slots=True)
class MinerCredentials:
    username: str = DEFAULT_USERNAME
    password: Secret | None = None


@dataclass(frozen=True, slots=True)
class CredentialStore:
    """Credentials per firmware, with per-miner overrides (by address or name)."""

    braiins: MinerCredentials = MinerCredentials()
    per_miner: Mapping[str, MinerCredentials] = field(default_factory=dict)

    def for_miner(self, address: str, name: str | None = None) -> MinerCredentials:
        for key in (name, address):
            if key is not None and key in self.per_miner:
                return self.per_miner[key]
        return self.braiins

    def secrets(self) -> tuple[str, ...]:
        """Every password held, for redacting text that must never contain one."""
        found = [c.password.reveal() for c in (self.braiins, *self.per_miner.values()) if c.password]
        return tuple(sorted({s for s in found if s}))


class CredentialsError(Exception):
    """A credentials file cannot be used. The message never quotes the file."""


def _entry(where: str, table: Any, base: MinerCredentials) -> MinerCredentials:
    if not isinstance(table, dict):
        raise CredentialsError(f"{where}: must be a table with username/password")
    unknown = sorted(set(table) - {"username", "password"})
    if unknown:
        raise CredentialsError(f"{where}: unknown key(s) {unknown} (expected username, password)")
    username = table.get("username", base.username)
    password = table.get("password")
    if not isinstance(username, str) or not username:
        raise CredentialsError(f"{where}.username: must be a non-empty string")
    if password is not None and not isinstance(password, str):
        raise CredentialsError(f"{where}.password: must be a string")
    return MinerCredentials(
        username=username, password=Secret(password) if password is not None else base.password
    )


def parse_credentials(text: str, source: str = "<credentials>") -> CredentialStore:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        data = None
    if not data or not any(isinstance(v, dict) for v in data.values()):
        # a file holding the password alone
        password = text.strip()
        if not password or "\n" in password:
            raise CredentialsError(
                f"{source}: expected a password alone on one line, or TOML with a [braiins] table"
            )
        return CredentialStore(braiins=MinerCredentials(password=Secret(password)))
    unknown = sorted(set(data) - {"braiins", "miners"})
    if unknown:
        raise CredentialsError(f"{source}: unknown table(s) {unknown} (expected braiins, miners)")
    braiins = _entry(f"{source}: braiins", data.get("braiins", {}), MinerCredentials())
    miners_table = data.get("miners", {})
    if not isinstance(miners_table, dict):
        raise CredentialsError(f"{source}: miners must be a table of tables")
    per_miner = {
        str(key): _entry(f"{source}: miners.{key}", value, braiins)
        for key, value in miners_table.items()
    }
    return CredentialStore(braiins=braiins, per_miner=per_miner)


def load_credentials(path: Path | None) -> CredentialStore:
    """Read a credentials file; no file configured means pyasic's defaults (root/root)."""
    if path is None:
        return CredentialStore()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CredentialsError(f"{path}: credentials file not found") from None
    except PermissionError:
        raise CredentialsError(f"{path}: permission denied reading credentials file") from None
    except UnicodeDecodeError:
        raise CredentialsError(f"{path}: credentials file is not UTF-8 text") from None
    return parse_credentials(text, source=str(path))


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret in text by ``***`` (longest first, so overlaps are covered)."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, REDACTED)
    return text
