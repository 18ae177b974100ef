"""`hashgov run` (the daemon) and `hashgov status` (read the retained status)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from controller.cli_config import load_or_exit
from controller.config import DEFAULT_CONFIG_PATH
from controller.logs import configure_logging


def _run(config_file: Path, dry_run: bool) -> int:
    from controller.service import Service, ServiceOptions

    config = load_or_exit(config_file)  # exits 78 with every problem named
    configure_logging(config.logging.format, config.logging.level)
    service = Service(config_file, options=ServiceOptions(dry_run=dry_run))
    return asyncio.run(service.run())


async def fetch_status(
    host: str, port: int, topic: str, timeout_seconds: float, **client_kwargs: Any
) -> bytes | None:
    """The retained status payload, or None if nothing arrives in time."""
    import aiomqtt

    async with aiomqtt.Client(host, port, **client_kwargs) as client:
        await client.subscribe(topic, qos=1)
        try:
            async with asyncio.timeout(timeout_seconds):
                async for message in client.messages:
                    payload = message.payload
                    return payload if isinstance(payload, bytes) else str(payload).encode()
        except TimeoutError:
            return None
    return None


def render_status(doc: dict[str, Any], console: Console) -> None:
    def kw(value: Any) -> str:
        return "n/a" if value is None else f"{float(value) / 1000:,.1f} kW"

    table = Table(
        title=f"hashgov — {doc.get('site', '?')} ({doc.get('mode', '?')})", show_header=False
    )
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("budget", f"{kw(doc.get('budget_watts'))} ({doc.get('budget_state')})")
    if doc.get("effective_budget_watts") != doc.get("budget_watts"):
        table.add_row("budget after cap / meter", kw(doc.get("effective_budget_watts")))
    table.add_row("measured draw", kw(doc.get("measured_watts")))
    table.add_row("planned draw", kw(doc.get("planned_watts")))
    table.add_row("headroom", kw(doc.get("headroom_watts")))
    table.add_row("planned hashrate", f"{doc.get('planned_ths', 0):,.1f} TH/s")
    table.add_row("fail-safe", "ACTIVE" if doc.get("fail_safe") else "no")
    table.add_row("paused", "yes" if doc.get("paused") else "no")
    if doc.get("cap_watts") is not None:
        table.add_row("operator cap", kw(doc.get("cap_watts")))
    for state, count in (doc.get("miners") or {}).items():
        table.add_row(f"miners {state}", str(count))
    console.print(table)
    console.print(f"reason: {doc.get('budget_reason', '')}", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        config: Path = typer.Option(
            DEFAULT_CONFIG_PATH, "--config", "-c", help="TOML config file."
        ),
        dry_run: bool = typer.Option(
            False, "--dry-run", help="Shadow mode: decide and report, send no commands."
        ),
    ) -> None:
        """Run the controller daemon (systemd Type=notify aware)."""
        raise typer.Exit(_run(config, dry_run))

    @app.command("status")
    def status(
        config: Path = typer.Option(
            DEFAULT_CONFIG_PATH, "--config", "-c", help="Config naming the broker and topic prefix."
        ),
        broker: str = typer.Option("", help="HOST:PORT of the broker (overrides the config)."),
        as_json: bool = typer.Option(False, "--json", help="Print the status document as JSON."),
        timeout: float = typer.Option(5.0, min=0.1, help="Seconds to wait for the status message."),
    ) -> None:
        """Show budget, draw, headroom and miners by state from the retained status message."""
        from controller.mqtt_link import client_options

        cfg = load_or_exit(config)
        host, port = cfg.mqtt.host, cfg.mqtt.port
        if broker:
            try:
                host, port_text = broker.rsplit(":", 1)
                port = int(port_text)
            except ValueError:
                raise typer.BadParameter(
                    f"expected HOST:PORT, got {broker!r}", param_hint="--broker"
                ) from None
        topic = f"{cfg.mqtt.topic_prefix}/status"
        options = client_options(cfg.mqtt)
        options.pop("hostname", None)
        options.pop("port", None)
        options["identifier"] = f"{cfg.mqtt.client_id}-status"
        options.pop("will", None)
        try:
            payload = asyncio.run(fetch_status(host, port, topic, timeout, **options))
        except Exception as exc:  # broker unreachable, auth refused: say so plainly
            typer.echo(f"cannot read {topic} from {host}:{port}: {exc}", err=True)
            raise typer.Exit(1) from None
        console = Console()
        if payload is None:
            typer.echo(f"no status on {topic} within {timeout:g} s (is hashgov running?)", err=True)
            raise typer.Exit(1)
        if payload.strip() == b"offline":
            if as_json:
                print(json.dumps({"state": "offline"}))
            else:
                console.print("hashgov is [bold red]offline[/] (last will / clean stop)")
            raise typer.Exit(3)
        try:
            doc = json.loads(payload)
        except ValueError:
            typer.echo(f"status on {topic} is not JSON: {payload[:80]!r}", err=True)
            raise typer.Exit(1) from None
        if as_json:
            sys.stdout.write(json.dumps(doc) + "\n")
        else:
            render_status(doc, console)
