"""Telemetry ingest: MQTT payloads in, typed and validated readings out.

``parse_payload`` is pure: one payload of one stream becomes a ``Reading`` (in
watts, with the plant's timestamp when it sends one) or a ``Rejection`` with a
short, stable reason label. ``TelemetryStore`` keeps the newest accepted
reading per stream, checks plant timestamps against our wall clock (ordering,
staleness, the future), counts every rejection by (stream, reason) and logs
each cause at most once a minute per stream.

Freshness is measured on the *monotonic* receive time: a wall-clock step never
makes old telemetry look new. Wall time is only used to check, never to trust,
the timestamps a plant puts in its payloads.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

import structlog

from controller.config import SiteConfig, StreamConfig

StreamKind = Literal["surplus", "plant_output", "plant_demand", "site_meter", "other_load"]

# Every label a Rejection.reason can take (stable: they are metric label values).
REJECTION_REASONS: Final = (
    "nan",
    "inf",
    "negative",
    "implausible",
    "not_a_number",
    "missing_field",
    "bad_json",
    "bad_timestamp",
    "out_of_order",
    "stale",
    "future_timestamp",
    "too_large",
)

MAX_PAYLOAD_BYTES: Final = 16_384
# When a stream sets no max_plausible_kw, nothing above 10 GW is believed.
DEFAULT_MAX_PLAUSIBLE_WATTS: Final = 10e9
# A numeric timestamp above this is in milliseconds (1e11 s is the year 5138).
_MS_THRESHOLD: Final = 1e11
_NUMBER_RE: Final = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_NAN_RE: Final = re.compile(r"[+-]?nan", re.IGNORECASE)
_INF_RE: Final = re.compile(r"[+-]?inf(?:inity)?", re.IGNORECASE)
_DETAIL_CHARS: Final = 120


@dataclass(frozen=True, slots=True)
class Reading:
    """One accepted sample, in watts. ``source_wall``: the plant's timestamp (UNIX s)."""

    stream: str
    kind: StreamKind
    watts: float
    source_wall: float | None
    received_wall: float
    received_mono: float


@dataclass(frozen=True, slots=True)
class Rejection:
    stream: str
    reason: str
    detail: str


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 3] + "..."


def _number_from_text(text: str, what: str) -> float:
    text = text.strip()
    if _NAN_RE.fullmatch(text):
        raise _Reject("nan", f"{what} is NaN")
    if _INF_RE.fullmatch(text):
        raise _Reject("inf", f"{what} is infinite")
    if not _NUMBER_RE.fullmatch(text):
        raise _Reject("not_a_number", f"{what} is not a number: {_short(text)}")
    value = float(text)
    if math.isinf(value):
        raise _Reject("inf", f"{what} overflows a float: {_short(text)}")
    return value


def _number_from_json(value: Any, what: str) -> float:
    if isinstance(value, bool) or value is None:
        raise _Reject("not_a_number", f"{what} is {_short(value)}, not a number")
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            raise _Reject("inf", f"{what} overflows a float") from None
    if isinstance(value, float):
        if math.isnan(value):
            raise _Reject("nan", f"{what} is NaN")
        if math.isinf(value):
            raise _Reject("inf", f"{what} is infinite")
        return value
    if isinstance(value, str):
        return _number_from_text(value, what)
    raise _Reject("not_a_number", f"{what} is a {type(value).__name__}, not a number")


def resolve_path(document: Any, path: str) -> Any:
    """Follow a dotted path (``data.values.0.kw``; list indices as numbers, negative ok)."""
    current = document
    for part in path.split("."):
        if isinstance(current, dict):
            if part not in current:
                raise _Reject("missing_field", f"no {part!r} in {path!r}")
            current = current[part]
        elif isinstance(current, list):
            try:
                index = int(part)
                current = current[index]
            except (ValueError, IndexError):
                raise _Reject("missing_field", f"no index {part!r} in {path!r}") from None
        else:
            raise _Reject("missing_field", f"{path!r} stops at a {type(current).__name__}")
    return current


def parse_timestamp(value: Any) -> float:
    """UNIX seconds or milliseconds (number or numeric string) or ISO 8601 -> UNIX seconds."""
    if isinstance(value, str) and not _NUMBER_RE.fullmatch(value.strip()):
        text = value.strip()
        if text.endswith(("z", "Z")):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise _Reject("bad_timestamp", f"timestamp is not ISO 8601: {_short(value)}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)  # a zone-less plant timestamp is taken as UTC
        return moment.timestamp()
    try:
        seconds = _number_from_json(value, "timestamp")
    except _Reject as exc:
        raise _Reject("bad_timestamp", exc.detail) from None
    if seconds > _MS_THRESHOLD:
        seconds /= 1000.0
    if seconds <= 0 or seconds > _MS_THRESHOLD:
        raise _Reject("bad_timestamp", f"timestamp out of range: {_short(value)}")
    return seconds


def _parse_constant(name: str) -> float:
    # JSON has no NaN/Infinity, but Python's json accepts them; keep them for the checks
    return float(name.replace("Infinity", "inf"))


def parse_payload(
    name: str,
    stream: StreamConfig,
    payload: bytes,
    received_wall: float,
    received_mono: float,
) -> Reading | Rejection:
    """Turn one payload into a Reading in watts, or a Rejection. Never raises."""
    try:
        value, source_wall = _extract(stream, payload)
        watts = value * stream.watts_per_unit * stream.sign
        if math.isinf(watts):
            raise _Reject("implausible", f"{value!r} {stream.unit} overflows watts")
        if watts < 0:
            if stream.kind != "surplus":
                raise _Reject("negative", f"{stream.kind} cannot be negative: {watts:g} W")
            # a plant in deficit has nothing to spare: that is a valid 0, and it must
            # take effect now (a rejection would hold the old budget through grace)
            watts = 0.0
        watts = abs(watts)  # -0.0 -> 0.0
        limit = (
            stream.max_plausible_kw * 1_000.0
            if stream.max_plausible_kw is not None
            else DEFAULT_MAX_PLAUSIBLE_WATTS
        )
        if watts > limit:
            raise _Reject("implausible", f"{watts:g} W above the plausible {limit:g} W")
    except _Reject as exc:
        return Rejection(name, exc.reason, exc.detail)
    return Reading(name, stream.kind, watts, source_wall, received_wall, received_mono)


def _extract(stream: StreamConfig, payload: bytes) -> tuple[float, float | None]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise _Reject("too_large", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        reason = "bad_json" if stream.format == "json" else "not_a_number"
        raise _Reject(reason, "payload is not UTF-8") from None
    if stream.format == "number":
        return _number_from_text(text, "payload"), None
    try:
        document = json.loads(text, parse_constant=_parse_constant)
    except (ValueError, RecursionError) as exc:
        raise _Reject("bad_json", f"not JSON: {_short(str(exc))}") from None
    assert stream.value_path is not None  # config guarantees it for json
    value = _number_from_json(resolve_path(document, stream.value_path), stream.value_path)
    source_wall: float | None = None
    if stream.timestamp_path:
        source_wall = parse_timestamp(resolve_path(document, stream.timestamp_path))
    return value, source_wall


# --------------------------------------------------------------------- store

AcceptHook = Callable[[Reading], None]
RejectHook = Callable[[Rejection], None]
Handler = Callable[[str, bytes, float, float], None]


def _lowers_budget(kind: str, new_watts: float, old_watts: float) -> bool:
    """Would replacing old with new lower the budget (or leave it)? Less surplus or
    plant output, more plant demand or other load."""
    if kind in ("surplus", "plant_output"):
        return new_watts < old_watts
    if kind in ("plant_demand", "other_load"):
        return new_watts > old_watts
    return False  # the site meter does not set the budget


class TelemetryStore:
    """Newest accepted reading per stream; every rejection counted.

    ``future_tolerance_seconds``: how far ahead of our wall clock a plant
    timestamp may be (clock skew) before the sample is rejected.
    """

    def __init__(
        self,
        site: SiteConfig,
        streams: Mapping[str, StreamConfig],
        *,
        on_accept: AcceptHook | None = None,
        on_reject: RejectHook | None = None,
        future_tolerance_seconds: float = 5.0,
        log_interval_seconds: float = 60.0,
        logger: Any = None,
    ) -> None:
        self.site = site
        self.streams: dict[str, StreamConfig] = dict(streams)
        self.on_accept = on_accept
        self.on_reject = on_reject
        self.future_tolerance_seconds = future_tolerance_seconds
        self.log_interval_seconds = log_interval_seconds
        self._log = logger if logger is not None else structlog.get_logger("hashgov.telemetry")
        self._latest: dict[str, Reading] = {}
        self.accepted_counts: dict[str, int] = dict.fromkeys(self.streams, 0)
        self.rejected_counts: dict[tuple[str, str], int] = {}
        # (stream, reason) -> (monotonic time of the last log line, suppressed since)
        self._last_logged: dict[tuple[str, str], tuple[float, int]] = {}
        self._by_topic = {s.topic: n for n, s in self.streams.items()}

    # ------------------------------------------------------------ intake

    def ingest(
        self, name: str, payload: bytes, received_wall: float, received_mono: float
    ) -> Reading | Rejection:
        """Parse a payload of stream ``name`` and offer it to the store."""
        stream = self.streams[name]
        return self.offer(parse_payload(name, stream, payload, received_wall, received_mono),
                          received_mono)

    def ingest_topic(
        self, topic: str, payload: bytes, received_wall: float, received_mono: float
    ) -> Reading | Rejection | None:
        """Like ingest, by MQTT topic; None for a topic that is no stream of ours."""
        name = self._by_topic.get(topic)
        if name is None:
            return None
        return self.ingest(name, payload, received_wall, received_mono)

    def handlers(self) -> dict[str, Handler]:
        """topic -> handler, ready for MqttLink(handlers=...)."""

        def handle(topic: str, payload: bytes, received_wall: float, received_mono: float) -> None:
            self.ingest_topic(topic, payload, received_wall, received_mono)

        return {topic: handle for topic in self._by_topic}

    def offer(self, item: Reading | Rejection, now_mono: float | None = None) -> Reading | Rejection:
        """Check a parsed item against what the store holds; keep it or count it."""
        if isinstance(item, Rejection):
            self._reject(item, now_mono)
            return item
        rejection = self._check(item)
        if rejection is not None:
            self._reject(rejection, item.received_mono)
            self._keep_if_safer(item, rejection)
            return rejection
        self._latest[item.stream] = item
        self.accepted_counts[item.stream] = self.accepted_counts.get(item.stream, 0) + 1
        if self.on_accept is not None:
            self.on_accept(item)
        return item

    def _keep_if_safer(self, item: Reading, rejection: Rejection) -> None:
        """A sample whose *timestamp* we cannot trust (our clock stepped, the plant's is
        off) must never raise the budget, but a drop it reports is still acted on: its
        value is taken when it lowers the budget, and it refreshes no freshness (the
        previous sample's times are kept, so stale -> grace -> fail-safe still runs)."""
        if rejection.reason not in ("future_timestamp", "stale"):
            return
        previous = self._latest.get(item.stream)
        if previous is None or not _lowers_budget(item.kind, item.watts, previous.watts):
            return
        self._latest[item.stream] = Reading(
            item.stream, item.kind, item.watts, previous.source_wall, previous.received_wall, previous.received_mono
        )

    def _check(self, reading: Reading) -> Rejection | None:
        if reading.source_wall is None:
            return None
        ts = reading.source_wall
        lead_seconds = ts - reading.received_wall
        if lead_seconds > self.future_tolerance_seconds:
            return Rejection(
                reading.stream,
                "future_timestamp",
                f"timestamp {lead_seconds:.1f} s ahead of our clock "
                f"(tolerance {self.future_tolerance_seconds:g} s)",
            )
        lag_seconds = reading.received_wall - ts
        if lag_seconds > self.site.stale_after_seconds:
            return Rejection(
                reading.stream,
                "stale",
                f"timestamp {lag_seconds:.1f} s old (stale after "
                f"{self.site.stale_after_seconds:g} s)",
            )
        previous = self._latest.get(reading.stream)
        if previous is not None and previous.source_wall is not None and (
            ts < previous.source_wall or (ts == previous.source_wall and reading.watts == previous.watts)
        ):
            # an equal timestamp with the same value is a re-delivery (e.g. a retained
            # sample after a reconnect) and must not refresh freshness; with a new value
            # it is news from a plant whose clock has coarse resolution, and is kept
            return Rejection(
                reading.stream,
                "out_of_order",
                f"timestamp {ts:.3f} not newer than the latest {previous.source_wall:.3f}",
            )
        return None

    def _reject(self, rejection: Rejection, now_mono: float | None) -> None:
        key = (rejection.stream, rejection.reason)
        self.rejected_counts[key] = self.rejected_counts.get(key, 0) + 1
        if self.on_reject is not None:
            self.on_reject(rejection)
        last = self._last_logged.get(key)
        if now_mono is None or last is None or now_mono - last[0] >= self.log_interval_seconds:
            self._log.warning(
                "telemetry_rejected",
                stream=rejection.stream,
                reason=rejection.reason,
                detail=rejection.detail,
                suppressed=last[1] if last is not None else 0,
            )
            self._last_logged[key] = (now_mono if now_mono is not None else 0.0, 0)
        else:
            self._last_logged[key] = (last[0], last[1] + 1)

    # ----------------------------------------------------------- queries

    def latest_by_stream(self, name: str) -> Reading | None:
        return self._latest.get(name)

    def streams_of(self, kind: str) -> list[str]:
        return [n for n, s in self.streams.items() if s.kind == kind]

    def latest(self, kind: str) -> Reading | None:
        """Newest reading of a kind (by receive time) over its streams."""
        found = [r for n in self.streams_of(kind) if (r := self._latest.get(n)) is not None]
        return max(found, key=lambda r: r.received_mono) if found else None

    def readings(self, kind: str) -> dict[str, Reading | None]:
        """stream name -> its latest reading (None if none yet), for every stream of a kind."""
        return {n: self._latest.get(n) for n in self.streams_of(kind)}

    def age_seconds(self, stream: str, now_mono: float) -> float | None:
        """Seconds since the latest accepted sample was received (None: never)."""
        reading = self._latest.get(stream)
        if reading is None:
            return None
        return max(0.0, now_mono - reading.received_mono)

    def rejected_total(self, stream: str | None = None) -> int:
        return sum(c for (s, _), c in self.rejected_counts.items() if stream is None or s == stream)
