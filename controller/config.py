"""Typed, validated site configuration (TOML).

Everything the daemon, the policy and the simulators know about a site comes
from here. Models are frozen pydantic models with ``extra="forbid"`` so a typo'd
key is an error, not a silently ignored setting. Power is configured in the
unit that reads naturally for each key (kW for site figures, W for miners) and
exposed to the core in watts through properties.
"""

from __future__ import annotations

import ipaddress
import itertools
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

DEFAULT_CONFIG_PATH = Path("/etc/hashgov/hashgov.toml")
EX_CONFIG = 78  # sysexits.h: configuration error

NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PosFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
# A site's powers in kW: a terawatt is a typo, and ×1000 to watts must stay finite
# (1.8e305 kW passed as a float and became an infinite grant cap in watts).
MAX_SITE_KW = 1e9
NonNegKw = Annotated[float, Field(ge=0, le=MAX_SITE_KW, allow_inf_nan=False)]
PosKw = Annotated[float, Field(gt=0, le=MAX_SITE_KW, allow_inf_nan=False)]
NonNegInt = Annotated[int, Field(ge=0)]
PosInt = Annotated[int, Field(gt=0)]
# one miner's power: no ASIC draws 100 kW; the bound also keeps target ranges finite
MinerWatts = Annotated[int, Field(gt=0, le=100_000)]
MAX_TARGETS_PER_MODEL = 1_000

UNIT_TO_WATTS: dict[str, float] = {"W": 1.0, "kW": 1_000.0, "MW": 1_000_000.0}
STREAM_KINDS = ("surplus", "plant_output", "plant_demand", "site_meter", "other_load")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# --------------------------------------------------------------------- site


class SiteConfig(_Strict):
    name: str = "site"
    grant_cap_kw: PosKw
    safety_margin_kw: NonNegKw = 0.0
    stale_after_seconds: PosFloat = 10.0
    grace_seconds: NonNegFloat = 5.0
    fail_safe_budget_kw: NonNegKw = 0.0
    ramp_up_kw_per_second: PosKw = 50.0
    hysteresis_kw: NonNegKw = 5.0
    min_on_seconds: NonNegFloat = 300.0
    min_off_seconds: NonNegFloat = 300.0
    control_period_seconds: PosFloat = 5.0
    # after a grant drop the fleet's draw must be within the grant this many seconds
    # after the drop's physical minimum (by the models' time constants); 0 = off
    shed_deadline_seconds: NonNegFloat = 1.0
    mode: Literal["control", "shadow"] = "control"
    on_shutdown: Literal["leave", "sleep"] = "leave"
    state_dir: Path = Path("/var/lib/hashgov")
    meter_gap_alert_kw: NonNegKw = 50.0
    # a meter reading above the fleet model lowers the budget at once; the correction
    # then decays to zero over this long (s)
    meter_release_seconds: PosFloat = 60.0
    # true when the site meter also measures the other loads on the grant
    meter_includes_other_loads: bool = False

    @model_validator(mode="after")
    def _fail_safe_within_cap(self) -> SiteConfig:
        if self.fail_safe_budget_kw > self.grant_cap_kw:
            raise ValueError(
                f"fail_safe_budget_kw ({self.fail_safe_budget_kw}) must not exceed "
                f"grant_cap_kw ({self.grant_cap_kw})"
            )
        return self

    @property
    def grant_cap_watts(self) -> float:
        return self.grant_cap_kw * 1_000.0

    @property
    def safety_margin_watts(self) -> float:
        return self.safety_margin_kw * 1_000.0

    @property
    def fail_safe_budget_watts(self) -> float:
        return self.fail_safe_budget_kw * 1_000.0

    @property
    def ramp_up_watts_per_second(self) -> float:
        return self.ramp_up_kw_per_second * 1_000.0

    @property
    def hysteresis_watts(self) -> float:
        return self.hysteresis_kw * 1_000.0


# --------------------------------------------------------------------- mqtt


class TlsConfig(_Strict):
    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class StreamConfig(_Strict):
    """One telemetry stream: where it is published and how to read it."""

    kind: Literal["surplus", "plant_output", "plant_demand", "site_meter", "other_load"]
    topic: Annotated[str, Field(min_length=1)]
    format: Literal["number", "json"] = "number"
    # dotted path into a JSON payload, e.g. "data.surplus"; list indices as numbers
    value_path: str | None = None
    timestamp_path: str | None = None
    unit: Literal["W", "kW", "MW"] = "kW"
    sign: Literal[1, -1] = 1
    max_plausible_kw: PosFloat | None = None

    @field_validator("topic")
    @classmethod
    def _no_wildcards(cls, topic: str) -> str:
        if "+" in topic or "#" in topic:
            raise ValueError("a telemetry topic must be exact, without + or # wildcards")
        return topic

    @model_validator(mode="after")
    def _json_needs_path(self) -> StreamConfig:
        if self.format == "json" and not self.value_path:
            raise ValueError("format = 'json' needs value_path (e.g. 'surplus_kw')")
        if self.format == "number" and (self.value_path or self.timestamp_path):
            raise ValueError("value_path/timestamp_path only apply to format = 'json'")
        return self

    @property
    def watts_per_unit(self) -> float:
        return UNIT_TO_WATTS[self.unit]


class MqttConfig(_Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(gt=0, lt=65536)] = 1883
    client_id: str = "hashgov"
    username: str | None = None
    # file holding the password alone (systemd LoadCredential drops it here)
    credentials_file: Path | None = None
    tls: TlsConfig | None = None
    allow_insecure: bool = False
    keepalive_seconds: PosInt = 15
    topic_prefix: str = "hashgov"
    operator_username: str | None = None
    streams: dict[str, StreamConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _streams_complete(self) -> MqttConfig:
        kinds = [s.kind for s in self.streams.values()]
        has_surplus = "surplus" in kinds
        has_split = "plant_output" in kinds and "plant_demand" in kinds
        if not has_surplus and not has_split:
            raise ValueError(
                "streams must include a 'surplus' stream, or both 'plant_output' and "
                f"'plant_demand' streams (found kinds: {sorted(set(kinds)) or 'none'})"
            )
        for single in ("surplus", "plant_output", "plant_demand", "site_meter"):
            if kinds.count(single) > 1:
                raise ValueError(f"at most one stream of kind '{single}' is allowed")
        topics = [s.topic for s in self.streams.values()]
        dupes = sorted({t for t in topics if topics.count(t) > 1})
        if dupes:
            raise ValueError(f"each stream needs its own topic; repeated: {dupes}")
        return self

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


# -------------------------------------------------------------------- fleet


class PowerRange(_Strict):
    min_watts: MinerWatts
    max_watts: MinerWatts
    step_watts: MinerWatts = 100

    @model_validator(mode="after")
    def _ordered(self) -> PowerRange:
        if self.min_watts > self.max_watts:
            raise ValueError(
                f"min_watts ({self.min_watts}) must not exceed max_watts ({self.max_watts})"
            )
        count = (self.max_watts - self.min_watts) // self.step_watts + 1
        if count > MAX_TARGETS_PER_MODEL:
            raise ValueError(
                f"{count} power targets ({self.min_watts}..{self.max_watts} W in steps of "
                f"{self.step_watts} W); at most {MAX_TARGETS_PER_MODEL} — use a larger step_watts"
            )
        return self


class ModelConfig(_Strict):
    """What the controller knows about one miner model (optionally per firmware)."""

    model: Annotated[str, Field(min_length=1)]
    firmware: str | None = None  # None: applies to any firmware
    nameplate_watts: MinerWatts
    nameplate_ths: PosFloat
    sleep_watts: Annotated[int, Field(ge=0, le=100_000)] = 30
    boot_seconds: NonNegFloat = 120.0
    # first-order time constants of the draw: after a new power target, after a stop
    # (a fast shed sleeps miners when target cuts would settle too slowly)
    power_tau_seconds: Annotated[float, Field(gt=0, le=3600)] = 3.0
    sleep_tau_seconds: Annotated[float, Field(gt=0, le=3600)] = 1.0
    power_range: PowerRange | None = None
    profiles_watts: Annotated[tuple[MinerWatts, ...], Field(min_length=1, max_length=MAX_TARGETS_PER_MODEL)] | None = None
    # (watts, TH/s) points; hashrate between points is interpolated linearly.
    hashrate_curve: tuple[tuple[PosFloat, NonNegFloat], ...]

    @model_validator(mode="after")
    def _targets_and_curve(self) -> ModelConfig:
        if (self.power_range is None) == (self.profiles_watts is None):
            raise ValueError("give exactly one of power_range or profiles_watts")
        if self.profiles_watts is not None and len(set(self.profiles_watts)) != len(
            self.profiles_watts
        ):
            raise ValueError(f"profiles_watts has repeated values: {list(self.profiles_watts)}")
        targets = self.targets_watts
        if targets[-1] > self.nameplate_watts:
            raise ValueError(
                f"highest power target ({targets[-1]} W) exceeds nameplate_watts "
                f"({self.nameplate_watts} W)"
            )
        curve = self.hashrate_curve
        if len(curve) < 2:
            raise ValueError("hashrate_curve needs at least two (watts, ths) points")
        for (w0, h0), (w1, h1) in itertools.pairwise(curve):
            if w1 <= w0:
                raise ValueError("hashrate_curve watts must strictly increase")
            if h1 < h0:
                raise ValueError("hashrate_curve TH/s must not decrease as watts rise")
        slopes = [(h1 - h0) / (w1 - w0) for (w0, h0), (w1, h1) in itertools.pairwise(curve)]
        for s0, s1 in itertools.pairwise(slopes):
            if s1 > s0 * (1 + 1e-9) + 1e-12:
                raise ValueError(
                    "hashrate_curve must be concave (TH per extra watt must not grow with power)"
                )
        if curve[0][0] > targets[0] or curve[-1][0] < targets[-1]:
            raise ValueError(
                f"hashrate_curve ({curve[0][0]}..{curve[-1][0]} W) must cover every power "
                f"target ({targets[0]}..{targets[-1]} W)"
            )
        return self

    @cached_property
    def targets_watts(self) -> tuple[int, ...]:
        """Every power target the firmware accepts, ascending."""
        if self.profiles_watts is not None:
            return tuple(sorted(self.profiles_watts))
        assert self.power_range is not None
        r = self.power_range
        values = list(range(r.min_watts, r.max_watts + 1, r.step_watts))
        if values[-1] != r.max_watts:
            values.append(r.max_watts)
        return tuple(values)

    @property
    def min_target_watts(self) -> int:
        return self.targets_watts[0]

    @property
    def max_target_watts(self) -> int:
        return self.targets_watts[-1]

    def hashrate_ths_at(self, watts: float) -> float:
        """Hashrate at a power draw, interpolated on the curve (clamped to its ends)."""
        curve = self.hashrate_curve
        if watts <= curve[0][0]:
            return curve[0][1] * max(watts, 0.0) / curve[0][0]
        for (w0, h0), (w1, h1) in itertools.pairwise(curve):
            if watts <= w1:
                return h0 + (h1 - h0) * (watts - w0) / (w1 - w0)
        return curve[-1][1]

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.model.lower(), self.firmware.lower() if self.firmware else None)


Firmware = Literal["luxos", "braiins"]


class MinerConfig(_Strict):
    address: str
    model: Annotated[str, Field(min_length=1)]
    firmware: Firmware
    name: str | None = None
    priority: int = 0  # higher runs first, sleeps last
    group: str = "default"
    pinned: bool = False  # keep running whenever the budget allows
    excluded: bool = False  # never commanded; counted as uncontrolled load

    @field_validator("address")
    @classmethod
    def _ip_literal(cls, address: str) -> str:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(
                f"address must be an IPv4/IPv6 literal (pyasic needs one), got {address!r}"
            ) from None
        return address

    @model_validator(mode="after")
    def _pin_or_exclude(self) -> MinerConfig:
        if self.pinned and self.excluded:
            raise ValueError("a miner cannot be both pinned and excluded")
        return self

    @property
    def miner_id(self) -> str:
        return self.name or self.address


class FleetConfig(_Strict):
    models: tuple[ModelConfig, ...] = ()
    miners: tuple[MinerConfig, ...] = ()
    # TOML files with [[miners]] tables, relative to the config file; merged into miners
    inventory_files: tuple[Path, ...] = ()
    poll_interval_seconds: PosFloat = 10.0
    command_timeout_seconds: PosFloat = 10.0
    read_timeout_seconds: PosFloat = 8.0
    max_concurrency: PosInt = 256
    command_retries: NonNegInt = 2
    # Braiins temperatures, fans and identity (gRPC, ~5x a power read in CPU): this
    # often per miner; the power fields come with every poll regardless
    detail_interval_seconds: PosFloat = 60.0
    # Braiins: keep one gRPC connection per miner open between commands (about half
    # the CPU per command on both sides); false = pyasic's new connection per call
    keep_grpc_connections: bool = True
    credentials_file: Path | None = None

    @model_validator(mode="after")
    def _consistent(self) -> FleetConfig:
        keys = [m.key for m in self.models]
        dupes = sorted({f"{k[0]}/{k[1] or '*'}" for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"models defined twice: {dupes}")
        return self

    def model_for(self, miner: MinerConfig) -> ModelConfig:
        """The firmware-specific model entry, else the any-firmware one, else the built-in one."""
        table = self._model_table
        found = table.get((miner.model.lower(), miner.firmware)) or table.get(
            (miner.model.lower(), None)
        )
        if found is not None:
            return found
        from controller.catalog import find_model  # late: the catalogue imports this module

        try:
            return find_model(miner.model, miner.firmware)
        except KeyError:
            raise KeyError(
                f"no [[fleet.models]] entry and no built-in model for {miner.model!r} "
                f"on firmware {miner.firmware!r}"
            ) from None

    @cached_property
    def _model_table(self) -> dict[tuple[str, str | None], ModelConfig]:
        return {m.key: m for m in self.models}


class MetricsConfig(_Strict):
    enabled: bool = True
    listen: str = "127.0.0.1"  # loopback unless the operator says otherwise
    port: Annotated[int, Field(ge=0, lt=65536)] = 9687


class LoggingConfig(_Strict):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class HashgovConfig(_Strict):
    site: SiteConfig
    mqtt: MqttConfig
    fleet: FleetConfig
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _fleet_resolves(self) -> HashgovConfig:
        problems: list[str] = []
        seen_addr: set[str] = set()
        seen_id: set[str] = set()
        for i, miner in enumerate(self.fleet.miners):
            try:
                self.fleet.model_for(miner)
            except KeyError as exc:
                problems.append(f"fleet.miners[{i}] ({miner.miner_id}): {exc.args[0]}")
            if miner.address in seen_addr:
                problems.append(f"fleet.miners[{i}]: address {miner.address} used twice")
            if miner.miner_id in seen_id:
                problems.append(f"fleet.miners[{i}]: name {miner.miner_id!r} used twice")
            seen_addr.add(miner.address)
            seen_id.add(miner.miner_id)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def total_nameplate_watts(self) -> int:
        return sum(self.fleet.model_for(m).nameplate_watts for m in self.fleet.miners)


# ------------------------------------------------------------------ loading


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a config: where, what was found, what was expected."""

    location: str
    value: Any
    message: str

    def __str__(self) -> str:
        shown = "" if self.value is _MISSING else f" (found: {self.value!r})"
        return f"{self.location}: {self.message}{shown}"


_MISSING: Any = object()


class ConfigError(Exception):
    def __init__(self, source: str, problems: Sequence[ConfigProblem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s)")

    def render(self) -> str:
        lines = [f"{self.source}: invalid configuration ({len(self.problems)} problem(s))"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def _format_loc(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _problems_from(exc: ValidationError, prefix: str = "") -> list[ConfigProblem]:
    problems = []
    for err in exc.errors(include_url=False):
        # model_validator errors carry the model's location; skip pydantic's
        # internal tags like "function-after[...]" that mean nothing to an operator
        loc = [p for p in err["loc"] if not (isinstance(p, str) and "[" in p)]
        where = _format_loc(loc)
        if prefix:
            where = f"{prefix}.{where}" if where != "(top level)" else prefix
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input", _MISSING)
        if err["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        elif err["type"] == "missing":
            value = _MISSING
        elif isinstance(value, dict):
            value = _MISSING  # a whole table is not a useful "found" value
        problems.append(ConfigProblem(where, value, msg))
    return problems


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(
            str(path), [ConfigProblem("(file)", _MISSING, "file not found")]
        ) from None
    except PermissionError:
        raise ConfigError(
            str(path), [ConfigProblem("(file)", _MISSING, "permission denied")]
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [ConfigProblem("(syntax)", _MISSING, str(exc))]) from None
    except UnicodeDecodeError:
        raise ConfigError(
            str(path), [ConfigProblem("(file)", _MISSING, "not UTF-8 text")]
        ) from None
    except OSError as exc:  # a directory, an I/O error: still a config problem, named
        raise ConfigError(
            str(path), [ConfigProblem("(file)", _MISSING, exc.strerror or type(exc).__name__)]
        ) from None


def load_inventory(path: Path) -> list[dict[str, Any]]:
    """Read an inventory file (a TOML list of [[miners]] tables)."""
    data = _read_toml(path)
    extra = sorted(set(data) - {"miners"})
    if extra:
        raise ConfigError(
            str(path), [ConfigProblem(k, _MISSING, "unknown key (typo?)") for k in extra]
        )
    miners = data.get("miners", [])
    if not isinstance(miners, list):
        raise ConfigError(str(path), [ConfigProblem("miners", miners, "must be a list of tables")])
    return miners


def parse_config(
    data: dict[str, Any], source: str = "<config>", base_dir: Path | None = None
) -> HashgovConfig:
    """Validate a config mapping; inventory files are read relative to base_dir."""
    data = dict(data)
    fleet = data.get("fleet")
    problems: list[ConfigProblem] = []
    inventory = fleet.get("inventory_files") if isinstance(fleet, dict) else None
    existing = fleet.get("miners", []) if isinstance(fleet, dict) else None
    # wrong types (inventory_files = 5, miners = "x") are left for validation to name
    if isinstance(fleet, dict) and isinstance(inventory, list | tuple) and inventory:
        fleet = dict(fleet)
        merged = list(existing) if isinstance(existing, list | tuple) else None
        for i, name in enumerate(inventory):
            if not isinstance(name, str | Path):
                continue  # validation names it: fleet.inventory_files[i]
            inv_path = Path(name)
            if not inv_path.is_absolute() and base_dir is not None:
                inv_path = base_dir / inv_path
            try:
                found = load_inventory(inv_path)
                if merged is not None:
                    merged.extend(found)
            except ConfigError as exc:
                problems += [
                    ConfigProblem(
                        f"fleet.inventory_files[{i}] {exc.source}: {p.location}", p.value, p.message
                    )
                    for p in exc.problems
                ]
        if merged is not None:
            fleet["miners"] = merged
        data["fleet"] = fleet
    try:
        config = HashgovConfig.model_validate(data)
    except ValidationError as exc:
        problems += _problems_from(exc)
        raise ConfigError(source, problems) from None
    if problems:
        raise ConfigError(source, problems)
    return config


def load_config(path: Path | str) -> HashgovConfig:
    """Read and validate a config file; raise ConfigError listing every problem."""
    path = Path(path)
    return parse_config(_read_toml(path), source=str(path), base_dir=path.parent)
