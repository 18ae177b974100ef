"""A complete site config for simulated hardware: what the demo, the scenario
runner and the integration tests hand the controller."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from controller.catalog import find_model
from controller.config import ModelConfig
from simulators.miners.fleet import MinerSpec, toml_string

SURPLUS_TOPIC = "plant/surplus"
METER_TOPIC = "site/meter"
OTHER_LOAD_TOPIC = "site/loads/ai"


@dataclass(frozen=True)
class SiteTiming:
    """Controller timing for a (possibly time-compressed) simulated site."""

    control_period_seconds: float = 1.0
    poll_interval_seconds: float = 1.0
    stale_after_seconds: float = 3.0
    grace_seconds: float = 2.0
    min_on_seconds: float = 0.0
    min_off_seconds: float = 0.0
    ramp_up_kw_per_second: float = 1000.0
    hysteresis_kw: float = 0.2
    read_timeout_seconds: float = 2.0
    command_timeout_seconds: float = 3.0
    shed_deadline_seconds: float = 1.0
    max_concurrency: int = 256
    meter_release_seconds: float = 60.0
    detail_interval_seconds: float = 60.0


def site_config_text(
    specs: Sequence[MinerSpec],
    *,
    broker_port: int,
    state_dir: Path,
    grant_cap_kw: float,
    broker_host: str = "127.0.0.1",
    timing: SiteTiming | None = None,
    safety_margin_kw: float = 0.0,
    metrics_port: int = 0,
    mode: str = "control",
    other_load: bool = False,
    meter: bool = True,
    topic_prefix: str = "hashgov",
    client_id: str = "hashgov",
    time_scale: float = 1.0,
) -> str:
    """``time_scale`` K > 1: the simulated miners settle K times faster, so the config
    carries their models with time constants divided by K (the controller's
    settling estimates must match the physics it commands)."""
    t = timing or SiteTiming()
    lines = [
        "[site]",
        'name = "simulated-site"',
        f"grant_cap_kw = {grant_cap_kw}",
        f"safety_margin_kw = {safety_margin_kw}",
        f"stale_after_seconds = {t.stale_after_seconds}",
        f"grace_seconds = {t.grace_seconds}",
        f"ramp_up_kw_per_second = {t.ramp_up_kw_per_second}",
        f"hysteresis_kw = {t.hysteresis_kw}",
        f"min_on_seconds = {t.min_on_seconds}",
        f"min_off_seconds = {t.min_off_seconds}",
        f"control_period_seconds = {t.control_period_seconds}",
        f"shed_deadline_seconds = {t.shed_deadline_seconds}",
        f"meter_release_seconds = {t.meter_release_seconds}",
        f'mode = "{mode}"',
        f'state_dir = "{state_dir}"',
        "",
        "[mqtt]",
        f'host = "{broker_host}"',
        f"port = {broker_port}",
        f'client_id = "{client_id}"',
        f'topic_prefix = "{topic_prefix}"',
        "",
        "[mqtt.streams.surplus]",
        'kind = "surplus"',
        f'topic = "{SURPLUS_TOPIC}"',
        'format = "json"',
        'value_path = "surplus_kw"',
        'timestamp_path = "ts"',
        'unit = "kW"',
        "",
    ]
    if meter:
        lines += [
            "[mqtt.streams.meter]",
            'kind = "site_meter"',
            f'topic = "{METER_TOPIC}"',
            'format = "json"',
            'value_path = "power_kw"',
            'timestamp_path = "ts"',
            'unit = "kW"',
            "",
        ]
    if other_load:
        lines += [
            "[mqtt.streams.ai]",
            'kind = "other_load"',
            f'topic = "{OTHER_LOAD_TOPIC}"',
            'unit = "kW"',
            "",
        ]
    lines += [
        "[fleet]",
        f"poll_interval_seconds = {t.poll_interval_seconds}",
        f"read_timeout_seconds = {t.read_timeout_seconds}",
        f"command_timeout_seconds = {t.command_timeout_seconds}",
        f"max_concurrency = {t.max_concurrency}",
        f"detail_interval_seconds = {t.detail_interval_seconds}",
        "command_retries = 1",
        "",
        "[metrics]",
        f"port = {metrics_port}",
        "",
        "[logging]",
        'format = "console"',
        'level = "warning"',
        "",
    ]
    for spec in specs:
        lines += [
            "[[fleet.miners]]",
            f'address = "{spec.address}"',
            f'name = "{spec.name or spec.address}"',
            f'model = "{spec.model}"',
            f'firmware = "{spec.firmware}"',
            "",
        ]
    if time_scale > 1.0:
        keys = dict.fromkeys((spec.model, spec.firmware) for spec in specs)
        for model, firmware in keys:
            lines += model_lines(scaled_model(find_model(model, firmware), time_scale))
    return "\n".join(lines)


def scaled_model(model: ModelConfig, time_scale: float) -> ModelConfig:
    """``model`` as it settles under ``SimFleet(time_scale=K)``: time constants ÷ K.

    ``boot_seconds`` stays: the controller uses it only as the grace before a
    resumed miner that has not been read mining yet is called unresponsive, and a
    poll of a large fleet takes real seconds whatever K is (÷ 180 it marked
    hundreds of woken miners unresponsive in `daily`, counted at nameplate)."""
    return model.model_copy(update={
        "power_tau_seconds": model.power_tau_seconds / time_scale,
        "sleep_tau_seconds": model.sleep_tau_seconds / time_scale,
    })


def model_lines(model: ModelConfig) -> list[str]:
    """One ``[[fleet.models]]`` entry, every field spelled out."""
    lines = [
        "[[fleet.models]]",
        f"model = {toml_string(model.model)}",
        *([f"firmware = {toml_string(model.firmware)}"] if model.firmware is not None else []),
        f"nameplate_watts = {model.nameplate_watts}",
        f"nameplate_ths = {model.nameplate_ths!r}",
        f"sleep_watts = {model.sleep_watts}",
        f"boot_seconds = {model.boot_seconds!r}",
        f"power_tau_seconds = {model.power_tau_seconds!r}",
        f"sleep_tau_seconds = {model.sleep_tau_seconds!r}",
    ]
    if model.power_range is not None:
        r = model.power_range
        lines.append(f"power_range = {{ min_watts = {r.min_watts}, max_watts = {r.max_watts}, "
                     f"step_watts = {r.step_watts} }}")
    if model.profiles_watts is not None:
        lines.append(f"profiles_watts = {list(model.profiles_watts)}")
    curve = ", ".join(f"[{w!r}, {h!r}]" for w, h in model.hashrate_curve)
    lines += [f"hashrate_curve = [{curve}]", ""]
    return lines
