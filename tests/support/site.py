"""A whole simulated site for integration tests: real mosquitto, simulated
miners spoken to by unmodified pyasic, and the daemon in-process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt

from controller.sdnotify import Notifier
from controller.service import Service, ServiceOptions
from simulators.broker import MosquittoBroker
from simulators.miners.fleet import MinerSpec, SimFleet, make_specs
from simulators.site import METER_TOPIC, SURPLUS_TOPIC, SiteTiming, site_config_text
from simulators.tasks import cancel_and_wait


@dataclass
class Feeder:
    """Publishes plant surplus and the site meter (the simulator's true draw)."""

    host: str
    port: int
    meter_watts: Callable[[], float]
    surplus_kw: float = 0.0
    rate_hz: float = 10.0
    publishing: bool = True
    sent: int = 0
    username: str | None = None
    password: str | None = None
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self.host,
                    self.port,
                    identifier=f"feeder-{id(self)}",
                    username=self.username,
                    password=self.password,
                ) as client:
                    while True:
                        if self.publishing:
                            now = time.time()
                            await client.publish(
                                SURPLUS_TOPIC,
                                json.dumps({"surplus_kw": self.surplus_kw, "ts": now}),
                            )
                            meter_kw = self.meter_watts() / 1000.0
                            await client.publish(
                                METER_TOPIC, json.dumps({"power_kw": meter_kw, "ts": now})
                            )
                            self.sent += 1
                        await asyncio.sleep(1.0 / self.rate_hz)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)  # broker restarting: try again

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)


@dataclass
class Site:
    broker: MosquittoBroker
    fleet: SimFleet
    feeder: Feeder
    service: Service
    config_path: Path
    specs: list[MinerSpec]
    service_task: asyncio.Task[int]

    def true_watts(self) -> float:
        return self.fleet.true_total_watts()


@contextlib.asynccontextmanager
async def running_site(
    tmp_path: Path,
    *,
    base_ip: str,
    count: int = 6,
    mix: str = "Antminer S19j Pro:braiins:1,Antminer S19j Pro:luxos:1,Antminer S21:braiins:1",
    grant_cap_kw: float = 100.0,
    surplus_kw: float = 100.0,
    time_scale: float = 30.0,
    timing: SiteTiming | None = None,
    mode: str = "control",
    dry_run: bool = False,
    notifier: Notifier | None = None,
    start_mining: bool = True,
    publishing: bool = True,
    broker_conf: str = "",
    feeder_username: str | None = None,
    feeder_password: str | None = None,
    edit_config: Callable[[str], str] | None = None,
    feeder_rate_hz: float = 10.0,
) -> AsyncIterator[Site]:
    """``broker_conf``: extra mosquitto config (e.g. a password file); ``feeder_username``
    / ``feeder_password``: the feeder's MQTT login; ``edit_config``: rewrites the
    generated daemon config text before the daemon starts."""
    specs = make_specs(count, mix, base_ip)
    async with (
        MosquittoBroker(workdir=tmp_path / "broker", extra_conf=broker_conf) as broker,
        SimFleet(specs, time_scale=time_scale, start_mining=start_mining) as fleet,
    ):
        config_path = tmp_path / "hashgov.toml"
        text = site_config_text(
            specs,
            broker_port=broker.port,
            state_dir=tmp_path / "state",
            grant_cap_kw=grant_cap_kw,
            timing=timing,
            mode=mode,
        )
        config_path.write_text(edit_config(text) if edit_config is not None else text)
        feeder = Feeder(
            broker.host,
            broker.port,
            fleet.true_total_watts,
            surplus_kw=surplus_kw,
            rate_hz=feeder_rate_hz,
            publishing=publishing,
            username=feeder_username,
            password=feeder_password,
        )
        feeder.start()
        service = Service(config_path, options=ServiceOptions(dry_run=dry_run, metrics_port=0), notifier=notifier)
        task = asyncio.ensure_future(service.run())
        site = Site(broker, fleet, feeder, service, config_path, specs, task)
        try:
            await asyncio.wait_for(service.acting.wait(), 30)
            yield site
        finally:
            service.request_stop()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(task, 10)
            await feeder.stop()
