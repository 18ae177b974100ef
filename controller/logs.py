"""Structured logging: structlog over the stdlib, JSON for machines, key-values for people.

``configure_logging("auto")`` writes one JSON object per line when stdout is not a
terminal or the process runs under systemd (``JOURNAL_STREAM``/``INVOCATION_ID``),
and coloured key-value lines on a terminal. Third-party stdlib loggers (aiomqtt,
pyasic, asyncio) go through the same pipeline, so they are rendered and redacted
the same way.

Conventions:

* The event is a fixed, snake_case name per kind of event (``telemetry_rejected``,
  ``command_failed``); the details go in keys, never in the event string:
  ``log.warning("telemetry_rejected", stream="surplus", reason="nan")``.
* Secrets never reach the output. ``redact_secrets`` replaces the value of any key
  that looks secret (password, token, secret, credential, api_key, authorization,
  private_key — except keys naming a file or path, such as ``credentials_file``) and
  any occurrence of a value given to ``register_secret`` (e.g. the MQTT and miner
  passwords once read from their credential files) with ``***``, in nested
  structures, rendered exceptions and foreign log lines too. Passwords in URLs
  (``mqtt://user:pw@host``) are masked as well.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Hashable, Mapping, MutableMapping
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

LogFormat = Literal["auto", "json", "console"]
REDACTED = "***"

_SECRET_KEY = re.compile(
    r"pass(word|wd|phrase)?|token|secret|credential|api_?key|authori[sz]ation|private_?key|cookie",
    re.IGNORECASE,
)
_PATHLIKE_KEY = re.compile(r"(_file|_path|_dir|_directory)$", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]+@", re.I)

_secrets_lock = threading.Lock()
_secret_values: frozenset[str] = frozenset()
_HANDLER_MARK = "_hashgov_handler"


def register_secret(value: str | None) -> None:
    """Redact this exact value wherever it appears in log output (no-op for empty)."""
    global _secret_values
    if not value:
        return
    with _secrets_lock:
        values = {value}
        stripped = value.strip()
        if stripped:
            values.add(stripped)  # credential files often end with a newline
        _secret_values = _secret_values | values


def clear_secrets() -> None:
    """Forget every registered secret (tests)."""
    global _secret_values
    with _secrets_lock:
        _secret_values = frozenset()


def _is_secret_key(key: object) -> bool:
    return (
        isinstance(key, str)
        and _SECRET_KEY.search(key) is not None
        and _PATHLIKE_KEY.search(key) is None
    )


def _scrub_text(text: str, secrets: frozenset[str]) -> str:
    # longest first, so a secret that contains another is masked whole
    for secret in sorted(secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    if "://" in text:
        text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)
    return text


def _scrub(value: Any, secrets: frozenset[str], depth: int = 0) -> Any:
    if depth > 8:
        return value
    if isinstance(value, str):
        return _scrub_text(value, secrets)
    if isinstance(value, bytes):
        return _scrub_text(value.decode("utf-8", "replace"), secrets)
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if _is_secret_key(k) else _scrub(v, secrets, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub(v, secrets, depth + 1) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    # anything else is rendered with str()/repr() later: scrub that text now
    return _scrub_text(str(value), secrets)


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask secret-looking keys and registered secret values."""
    secrets = _secret_values
    for key in list(event_dict):
        if _is_secret_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key], secrets)
    return event_dict


def _under_systemd(environ: Mapping[str, str]) -> bool:
    return bool(environ.get("JOURNAL_STREAM") or environ.get("INVOCATION_ID"))


def resolve_format(
    fmt: LogFormat, stream: TextIO, environ: Mapping[str, str] | None = None
) -> Literal["json", "console"]:
    """What ``auto`` means here: JSON under systemd or off a terminal, else console."""
    if fmt != "auto":
        return fmt
    env = os.environ if environ is None else environ
    if _under_systemd(env):
        return "json"
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return "console" if tty else "json"


def configure_logging(
    format: LogFormat = "auto",  # the config key is called format
    level: str | int = "info",
    *,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> Literal["json", "console"]:
    """Set up structlog and the stdlib root logger; returns the format chosen.

    Safe to call again (SIGHUP reload, tests): it replaces its own handler.
    """
    out = sys.stdout if stream is None else stream
    chosen = resolve_format(format, out, environ)
    numeric = level if isinstance(level, int) else logging.getLevelNamesMapping()[level.upper()]

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    final: list[Processor]
    if chosen == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
        final = [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ]
    else:
        try:
            colors = out.isatty()
        except (AttributeError, ValueError):
            colors = False
        renderer = structlog.dev.ConsoleRenderer(colors=colors)
        final = [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ]

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=final,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)

    _settle_foreign_logging()
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False) or _is_basic_config(h)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    return chosen


def _settle_foreign_logging() -> None:
    """pyasic calls logging.basicConfig and sets the root level to WARNING the first time
    it is imported. Import it now, before we configure, so it cannot later silence our
    info events or add its own stderr format."""
    with contextlib.suppress(ImportError):  # pyasic is a dependency; be safe anyway
        import pyasic  # noqa: F401


def _is_basic_config(handler: logging.Handler) -> bool:
    """The plain stderr handler logging.basicConfig installs (pyasic does that)."""
    return type(handler) is logging.StreamHandler and getattr(handler, "stream", None) is sys.stderr


def get_logger(component: str, **initial: Any) -> structlog.stdlib.BoundLogger:
    """A logger bound to ``component`` (e.g. "telemetry", "actuator")."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(
        f"hashgov.{component}"
    ).bind(component=component, **initial)
    return logger


class OncePerKey:
    """Decides whether a recurring condition is logged: the first time per key only.

    For "log each rejection cause once" (telemetry) and similar; ``reset(key)``
    re-arms a key once the condition has cleared.
    """

    def __init__(self, max_keys: int = 10_000) -> None:
        self._seen: MutableMapping[Hashable, None] = {}
        self._max_keys = max_keys

    def first(self, key: Hashable) -> bool:
        if key in self._seen:
            return False
        if len(self._seen) >= self._max_keys:  # bounded: garbage keys cannot grow it forever
            self._seen.pop(next(iter(self._seen)))
        self._seen[key] = None
        return True

    def reset(self, key: Hashable) -> None:
        self._seen.pop(key, None)
