"""`hashgov check-config`: validate a config and summarise it on one screen."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer
from rich.console import Console

from controller.config import (
    DEFAULT_CONFIG_PATH,
    EX_CONFIG,
    ConfigError,
    HashgovConfig,
    load_config,
)


def load_or_exit(path: Path, console: Console | None = None) -> HashgovConfig:
    """Load a config for a command; on any problem print them all and exit 78."""
    try:
        return load_config(path)
    except ConfigError as exc:
        (console or Console(stderr=True, soft_wrap=True)).print(
            exc.render(), markup=False, highlight=False
        )
        raise typer.Exit(EX_CONFIG) from None


def summary_lines(config: HashgovConfig) -> list[str]:
    site, mqtt, fleet = config.site, config.mqtt, config.fleet
    lines = [
        f"site      {site.name}: grant cap {site.grant_cap_kw:g} kW, margin {site.safety_margin_kw:g} kW, "
        f"fail-safe {site.fail_safe_budget_kw:g} kW, mode {site.mode}",
        f"timing    control every {site.control_period_seconds:g} s, stale after "
        f"{site.stale_after_seconds:g} s + grace {site.grace_seconds:g} s, ramp "
        f"{site.ramp_up_kw_per_second:g} kW/s, min on/off {site.min_on_seconds:g}/{site.min_off_seconds:g} s",
        f"mqtt      {mqtt.host}:{mqtt.port} tls={'on' if mqtt.tls else 'off'} "
        f"user={mqtt.username or '-'} prefix={mqtt.topic_prefix}",
    ]
    for name, stream in mqtt.streams.items():
        path = f" {stream.value_path}" if stream.value_path else ""
        lines.append(
            f"  stream  {name}: {stream.kind} <- {stream.topic} ({stream.format}{path}, {stream.unit}, "
            f"sign {stream.sign:+d})"
        )
    by_model = Counter((m.model, m.firmware) for m in fleet.miners)
    lines.append(
        f"fleet     {len(fleet.miners)} miners, nameplate {config.total_nameplate_watts / 1000:,.1f} kW, "
        f"{sum(m.excluded for m in fleet.miners)} excluded, {sum(m.pinned for m in fleet.miners)} pinned"
    )
    for (model, firmware), count in sorted(by_model.items()):
        lines.append(f"  {count:>6} x {model} ({firmware})")
    metrics = config.metrics
    url = f"http://{metrics.listen}:{metrics.port}/metrics" if metrics.enabled else "off"
    lines.append(f"metrics   {url}")
    return lines


def register(app: typer.Typer) -> None:
    @app.command("check-config")
    def check_config(
        config_file: Path = typer.Argument(DEFAULT_CONFIG_PATH, help="TOML config to validate."),
    ) -> None:
        """Validate a config: print OK and a summary, or every problem and exit 78."""
        config = load_or_exit(config_file)
        console = Console(highlight=False, soft_wrap=True)
        console.print("OK", style="bold green")
        for line in summary_lines(config):
            console.print(line, markup=False)
