"""`hashgov sim plant`: publish a plant profile to a broker until Ctrl-C / --duration."""

from __future__ import annotations

import asyncio
import json
import math
import urllib.request
from pathlib import Path
from typing import Annotated

import typer


def _fail(argument: str, message: str) -> typer.Exit:
    typer.echo(f"error: {argument}: {message}", err=True)
    return typer.Exit(code=2)


def parse_broker(text: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [::1]:1883) -> (host, port); ValueError with the reason."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port must be a number, got {port_text!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1..65535, got {port}")
    return host, port


def admin_meter(url: str, timeout_seconds: float = 2.0) -> float:
    """GET {url}/meter from the miner simulator's admin API -> watts."""
    with urllib.request.urlopen(url.rstrip("/") + "/meter", timeout=timeout_seconds) as resp:
        doc = json.loads(resp.read())
    watts = doc.get("watts", doc.get("true_total_watts"))
    if isinstance(watts, bool) or not isinstance(watts, int | float) or not math.isfinite(watts):
        raise ValueError(f"/meter returned no usable watts: {doc!r}")
    return float(watts)


def register(sim_app: typer.Typer) -> None:
    @sim_app.command("plant")
    def plant(
        broker: Annotated[str, typer.Option("--broker", help="MQTT broker HOST:PORT.")],
        profile: Annotated[
            str,
            typer.Option(
                "--profile",
                help="steady|steps|ramps|noise|trip|dropout|stale|garbage, or a CSV file "
                "(t_seconds,surplus_kw[,other_load_kw]).",
            ),
        ],
        config: Annotated[
            Path, typer.Option("--config", help="hashgov TOML: the streams to publish.")
        ],
        rate_hz: Annotated[float, typer.Option("--rate-hz", help="Samples per second.")] = 1.0,
        time_scale: Annotated[
            float, typer.Option("--time-scale", help="Profile time runs K times faster.")
        ] = 1.0,
        miners_admin: Annotated[
            str | None,
            typer.Option("--miners-admin", help="Miner simulator admin URL; GET /meter = site meter."),
        ] = None,
        duration: Annotated[
            float | None, typer.Option("--duration", help="Stop after S seconds (real time).")
        ] = None,
        username: Annotated[str | None, typer.Option("--username", help="MQTT username.")] = None,
        password_file: Annotated[
            Path | None, typer.Option("--password-file", help="File holding the MQTT password.")
        ] = None,
    ) -> None:
        """Publish surplus / plant / other-load / site-meter telemetry from a profile."""
        from controller.cli_config import load_or_exit
        from simulators.plant.profile import load_profile
        from simulators.plant.publisher import MeterSource, PlantPublisher

        try:
            host, port = parse_broker(broker)
        except ValueError as exc:
            raise _fail("--broker", str(exc)) from None
        if not (rate_hz > 0 and math.isfinite(rate_hz)):
            raise _fail("--rate-hz", f"must be > 0, got {rate_hz}")
        if not (time_scale > 0 and math.isfinite(time_scale)):
            raise _fail("--time-scale", f"must be > 0, got {time_scale}")
        if duration is not None and not duration > 0:
            raise _fail("--duration", f"must be > 0, got {duration}")
        if miners_admin is not None and not miners_admin.startswith(("http://", "https://")):
            raise _fail("--miners-admin", f"must be an http:// URL, got {miners_admin!r}")
        password: str | None = None
        if password_file is not None:
            try:
                password = password_file.read_text().rstrip("\r\n")
            except OSError as exc:
                raise _fail("--password-file", f"cannot read {password_file}: {exc.strerror}") from None
        cfg = load_or_exit(config)
        try:
            prof = load_profile(profile, cfg.site.grant_cap_kw)
        except (ValueError, OSError) as exc:
            raise _fail("--profile", str(exc)) from None

        meter: MeterSource | None = None
        if miners_admin is not None:
            url = miners_admin

            async def read_meter() -> float:
                return await asyncio.to_thread(admin_meter, url)

            meter = read_meter
        publisher = PlantPublisher(
            cfg.mqtt.streams,
            prof,
            host=host,
            port=port,
            rate_hz=rate_hz,
            time_scale=time_scale,
            meter_watts=meter,
            username=username,
            password=password,
        )
        typer.echo(
            f"sim plant: profile {prof.name} -> {host}:{port} "
            f"({len(cfg.mqtt.streams)} streams, {rate_hz:g} Hz, x{time_scale:g})",
            err=True,
        )
        try:
            asyncio.run(publisher.run(duration))
        except KeyboardInterrupt:
            pass
        except OSError as exc:
            typer.echo(f"error: --broker: cannot reach {host}:{port}: {exc}", err=True)
            raise typer.Exit(code=69) from None
        except Exception as exc:  # aiomqtt.MqttError and friends
            typer.echo(f"error: --broker: {host}:{port}: {exc}", err=True)
            raise typer.Exit(code=69) from None
        typer.echo(f"sim plant: published {publisher.published} messages", err=True)
