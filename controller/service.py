"""The daemon: wires telemetry, fleet poller, control loop, actuator, metrics,
status and operator commands into one supervised asyncio TaskGroup.

Lifecycle: load config (bad → exit 78) → read the fleet once (READY=1 after
it) → control. A task that fails is logged and restarted with backoff; a task
that keeps failing ends the process with exit 1 so systemd restarts it clean.
SIGHUP reloads the config (a bad one is refused, the old one kept); SIGTERM
stops, leaving miners as they are unless site.on_shutdown = "sleep".
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from controller import plan_state
from controller.actuator import Actuator
from controller.clock import Clock, SystemClock
from controller.config import EX_CONFIG, ConfigError, HashgovConfig, load_config
from controller.control import ControlLoop, Decision
from controller.fleet import MinerStatus
from controller.logs import register_secret
from controller.metrics import Metrics
from controller.mqtt_link import MqttLink
from controller.operator import (
    OperatorCommand,
    OperatorState,
    Refusal,
    apply_command,
    parse_command,
    reply_topic,
    state_from_json,
    state_to_json,
)
from controller.persist import read_json, write_json_atomic
from controller.sdnotify import Notifier
from controller.telemetry import REJECTION_REASONS, Reading, Rejection, TelemetryStore
from controller.tracker import FleetTracker
from drivers.base import CommandResult, MinerDriver, close_drivers
from drivers.credentials import CredentialsError, load_credentials
from drivers.open_files import raise_open_files_limit
from drivers.poller import FleetPoller
from drivers.pyasic_driver import build_drivers

log = structlog.get_logger("hashgov.service")

EX_SOFTWARE = 1
CRASH_WINDOW_SECONDS = 120.0
MAX_CRASHES_IN_WINDOW = 5
STATUS_MIN_SPACING_SECONDS = 1.0
PLAN_SAVE_MIN_SPACING_SECONDS = 5.0  # even while every round commands something
PLAN_SAVE_INTERVAL_SECONDS = 60.0
OFFLINE_PAYLOAD = b"offline"
# Garbage collection after start-up. At the defaults (700, 10, 10) the scale bench
# (10,000 miners) ran a full collection every few seconds, ~160 ms each (up to
# 325 ms), inside rounds: every gRPC command leaves cyclic garbage (h2 connections)
# and a round's ~50,000 live objects get promoted, so the old generation grows
# fast. Full collections now wait for 100 middle ones instead of 10; the young
# generations keep their defaults. Tried and dropped: (50_000, 20, 100), whose young
# collections freed ~60,000 objects at once (up to 290 ms), and (2_000, 10, 1_000),
# which cost the 1,000-miner daily bench 17 % more controller CPU than the defaults.
GC_THRESHOLDS = (700, 10, 100)

DriverFactory = Callable[[HashgovConfig, Clock], Mapping[str, MinerDriver]]


def default_driver_factory(config: HashgovConfig, clock: Clock) -> Mapping[str, MinerDriver]:
    credentials = load_credentials(config.fleet.credentials_file)
    for secret in credentials.secrets():
        register_secret(secret)  # masked in every log line from now on
    return build_drivers(config, clock=clock, credentials=credentials)


def plan_worth_logging(decision: Decision, previous_budget_watts: float | None) -> bool:
    """A round is logged ("plan") when it sends commands, and when the budget fell
    even if nothing needs to change: the log then shows every drop's decision and
    when it was taken (the benches' decide latency is read from it; without the
    quiet rounds a drop was matched to a later round's commands, seconds later)."""
    if decision.commands:
        return True
    return previous_budget_watts is not None and (
        decision.effective_budget_watts < previous_budget_watts
    )


class CrashLoop(Exception):
    """A supervised task failed too often: exit and let the service manager restart us."""


@dataclass
class ServiceOptions:
    dry_run: bool = False
    metrics_port: int | None = None  # override (tests: 0 = ephemeral)


def status_document(
    decision: Decision, config: HashgovConfig, *, shadow: bool, wall_time: float
) -> dict[str, Any]:
    counts = collections.Counter(str(m.status) for m in decision.fleet.miners)
    measured = decision.meter_watts
    return {
        "state": "online",
        "site": config.site.name,
        "mode": "shadow" if shadow else "control",
        "ts": round(wall_time, 3),
        # the budget in force (after an operator cap); grant_budget_watts before the cap
        "budget_watts": round(decision.capped_budget_watts, 1),
        "grant_budget_watts": round(decision.budget.watts, 1),
        "effective_budget_watts": round(decision.effective_budget_watts, 1),
        "budget_state": decision.budget.state,
        "budget_reason": decision.budget.reason,
        "fail_safe": decision.budget.fail_safe,
        "measured_watts": None if measured is None else round(measured, 1),
        "planned_watts": round(decision.plan.planned_watts, 1),
        "planned_ths": round(decision.plan.planned_ths, 2),
        "headroom_watts": None
        if measured is None
        else round(decision.capped_budget_watts - measured, 1),
        "paused": decision.paused,
        "cap_watts": decision.operator_cap_watts,
        "miners": {state.value: counts.get(state.value, 0) for state in MinerStatus},
        "miner_count": len(decision.fleet.miners),
    }


class Service:
    def __init__(
        self,
        config_path: Path,
        *,
        options: ServiceOptions | None = None,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
        driver_factory: DriverFactory | None = None,
    ) -> None:
        self.config_path = config_path
        self.options = options or ServiceOptions()
        self.clock: Clock = clock or SystemClock()
        self.notifier = notifier or Notifier()
        self._driver_factory: DriverFactory = driver_factory or default_driver_factory
        self._stop = asyncio.Event()
        self._status_due = asyncio.Event()
        self._last_budget_watts: float | None = None  # the last round's, for the plan log
        self.ready = asyncio.Event()  # READY=1 sent: the fleet has been read
        self.acting = asyncio.Event()  # the control loop has made its first decision
        self.metrics_port: int | None = None
        self.operator_state = OperatorState()
        self.decisions = 0
        self.last_status: dict[str, Any] | None = None
        self._plan_saved_at = -float("inf")  # the last status document published

    # ------------------------------------------------------------ building

    def _build(self, config: HashgovConfig) -> None:
        self.config = config
        self.shadow = self.options.dry_run or config.site.mode == "shadow"
        self.metrics = Metrics(monotonic=self.clock.monotonic)
        self.metrics.register_streams(config.mqtt.streams, REJECTION_REASONS)
        self.metrics.set_flags(shadow_mode=self.shadow, mqtt_connected=False)
        self.store = TelemetryStore(
            config.site,
            config.mqtt.streams,
            on_accept=lambda r: self.metrics.telemetry_accepted_sample(r.stream, r.received_mono),
            on_reject=lambda r: self.metrics.telemetry_rejected_sample(r.stream, r.reason),
        )
        self.tracker = FleetTracker(config)
        self._load_operator_state()
        restored = plan_state.restore_switch_times(
            config.site.state_dir, self.tracker, self.clock.monotonic(), self.clock.wall()
        )
        if restored:
            log.info("switch_times_restored", miners=restored)
        self.drivers: dict[str, MinerDriver] = dict(self._driver_factory(config, self.clock))
        self.poller = FleetPoller(
            self.drivers,
            max_concurrency=config.fleet.max_concurrency,
            read_timeout_seconds=config.fleet.read_timeout_seconds,
            clock=self.clock,
            # a large fleet cannot be read within one read timeout: let a poll use up to
            # its interval (misses then rotate to the front of the next poll)
            slack_seconds=max(
                0.5, config.fleet.poll_interval_seconds - config.fleet.read_timeout_seconds),
            # reads give way to a trip's queued stops, and to running stops and queued
            # commands for half a poll
            yield_to=lambda: self.actuator.stops_first(),
            defer_to=lambda: self.actuator.commands_first(),
        )
        self.actuator = Actuator(
            self.drivers,
            self.clock,
            max_concurrency=config.fleet.max_concurrency,
            on_result=self._on_command_result,
            observer=self.tracker,
            dry_run=self.shadow,
        )
        self.loop = ControlLoop(
            config,
            self.store,
            self.tracker,
            self.actuator,
            self.clock,
            operator=lambda: self.operator_state,
            on_decision=self._on_decision,
        )
        prefix = config.mqtt.topic_prefix
        self.status_topic = f"{prefix}/status"
        self.command_topic = f"{prefix}/command"
        handlers: dict[str, Callable[[str, bytes, float, float], None]] = {
            s.topic: self._on_telemetry for s in config.mqtt.streams.values()
        }
        handlers[self.command_topic] = self._on_operator_message
        self.link = MqttLink(
            config.mqtt,
            will_topic=self.status_topic,
            will_payload=OFFLINE_PAYLOAD,
            handlers=handlers,
            clock=self.clock,
            on_connection_change=lambda up: self.metrics.set_flags(mqtt_connected=up),
        )

    # ------------------------------------------------------------ callbacks

    def _on_telemetry(
        self, topic: str, payload: bytes, received_wall: float, received_mono: float
    ) -> None:
        item = self.store.ingest_topic(topic, payload, received_wall, received_mono)
        if isinstance(item, Reading | Rejection):
            self.loop.on_telemetry(item)

    def _on_command_result(self, result: CommandResult) -> None:
        self.tracker.command_sent(result, self.clock.monotonic())
        self.metrics.command_done(str(result.kind), str(result.outcome), result.latency_seconds)

    def _on_decision(self, decision: Decision) -> None:
        self.decisions += 1
        self.acting.set()
        counts = collections.Counter(str(m.status) for m in decision.fleet.miners)
        self.metrics.set_miner_states(counts)
        self.metrics.set_power(
            budget_watts=decision.capped_budget_watts,
            measured_draw_watts=decision.meter_watts,
            planned_draw_watts=decision.plan.planned_watts,
            model_draw_watts=decision.model_watts,
            planned_hashrate_ths=decision.plan.planned_ths,
        )
        self.metrics.set_flags(fail_safe_active=decision.budget.fail_safe)
        self.metrics.control_loop_done(decision.duration_seconds, self.clock.wall())
        previous_budget_watts = self._last_budget_watts
        self._last_budget_watts = decision.effective_budget_watts
        if plan_worth_logging(decision, previous_budget_watts):
            log.info(
                "plan",
                budget_watts=round(decision.effective_budget_watts),
                planned_watts=round(decision.plan.planned_watts),
                budget_state=decision.budget.state,
                commands=len(decision.commands),
                round_ms=round(decision.duration_seconds * 1000.0, 1),
                shadow=self.shadow or None,
                fast_shed=next(
                    (n for n in decision.plan.notes if n.startswith("fast shed:")), None
                ),
            )
        self._status_due.set()

    def _on_operator_message(
        self, topic: str, payload: bytes, received_wall: float, received_mono: float
    ) -> None:
        parsed = parse_command(payload, frozenset(self.tracker.miner_ids))
        if isinstance(parsed, Refusal):
            log.warning(
                "operator_command_refused", request_id=parsed.request_id, error=parsed.error
            )
            self._reply(parsed.request_id, {"ok": False, "error": parsed.error})
            return
        self._apply_operator(parsed)

    def _apply_operator(self, cmd: OperatorCommand) -> None:
        self.operator_state = apply_command(self.operator_state, cmd)
        saved = self._save_operator_state()
        log.info(
            "operator_command",
            request_id=cmd.request_id,
            command=cmd.command,
            miner=cmd.miner,
            cap_watts=cmd.cap_watts,
        )
        self._reply(
            cmd.request_id,
            {
                "ok": True,
                "command": cmd.command,
                "persisted": saved,
                "state": state_to_json(self.operator_state),
            },
        )
        self.loop.wake(urgent=True)

    def _reply(self, request_id: str | None, doc: dict[str, Any]) -> None:
        doc = {"id": request_id, **doc}
        topic = reply_topic(self.config.mqtt.topic_prefix, request_id)
        self._spawn(self.link.publish(topic, json.dumps(doc).encode(), retain=False))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------ operator state

    @property
    def _operator_path(self) -> Path:
        return self.config.site.state_dir / "operator.json"

    def _load_operator_state(self) -> None:
        try:
            doc = read_json(self._operator_path)
            if doc is not None:
                self.operator_state = state_from_json(doc)
                log.info("operator_state_restored", **state_to_json(self.operator_state))
        except (OSError, ValueError) as exc:
            log.error("operator_state_unreadable", path=str(self._operator_path), error=str(exc))

    def _save_operator_state(self) -> bool:
        try:
            write_json_atomic(self._operator_path, state_to_json(self.operator_state))
            return True
        except OSError as exc:
            log.error("operator_state_not_saved", path=str(self._operator_path), error=str(exc))
            return False

    # ------------------------------------------------------------ tasks

    async def _supervise(self, name: str, fn: Callable[[], Awaitable[None]]) -> None:
        crashes: collections.deque[float] = collections.deque()
        backoff_seconds = 1.0
        while True:
            try:
                await fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                now = self.clock.monotonic()
                crashes.append(now)
                while crashes and crashes[0] < now - CRASH_WINDOW_SECONDS:
                    crashes.popleft()
                log.exception(
                    "task_failed", task=name, error=repr(exc), restarts_in_s=backoff_seconds
                )
                if len(crashes) >= MAX_CRASHES_IN_WINDOW:
                    raise CrashLoop(
                        f"{name} failed {len(crashes)} times in {CRASH_WINDOW_SECONDS:g} s"
                    ) from exc
                await self.clock.sleep(backoff_seconds)
                backoff_seconds = min(backoff_seconds * 2, 30.0)

    async def _poll_forever(self) -> None:
        while True:
            started = self.clock.monotonic()
            snapshot = await self.poller.poll()
            for state in snapshot.states.values():
                self.tracker.observe(state)
            self.tracker.poll_completed(snapshot.taken_at_seconds)
            if not self.loop.fleet_read.is_set():
                reachable = sum(s.reachable for s in snapshot.states.values())
                log.info("fleet_read", miners=len(snapshot.states), reachable=reachable)
                self.loop.fleet_read.set()
                self._announce_ready()
            spent = self.clock.monotonic() - started
            await self.clock.sleep(max(0.0, self.config.fleet.poll_interval_seconds - spent))

    def _announce_ready(self) -> None:
        """READY=1 after the first fleet read (the control loop then waits for telemetry)."""
        # the long-lived heap (config, drivers, pyasic objects) is built: freeze it so
        # periodic full collections do not rescan it in the control path
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        self.ready.set()
        self.notifier.ready("fleet read; waiting for plant telemetry")
        log.info("ready", shadow=self.shadow, miners=len(self.drivers))

    async def _control_forever(self) -> None:
        await self.loop.run(self.notifier.watchdog)

    async def _status_forever(self) -> None:
        last_line = ""
        while True:
            await self._status_due.wait()
            self._status_due.clear()
            decision = self.loop.last
            if decision is not None:
                doc = status_document(
                    decision, self.config, shadow=self.shadow, wall_time=self.clock.wall()
                )
                await self.link.publish(self.status_topic, json.dumps(doc).encode(), retain=True)
                self.last_status = doc
                await self._save_plan(decision)
                line = self._status_line()
                if line != last_line:
                    self.notifier.status(line)
                    last_line = line
            await self.clock.sleep(STATUS_MIN_SPACING_SECONDS)

    async def _save_plan(self, decision: Decision) -> None:
        """Persist the last plan when it commanded something (or every minute), in a
        thread: at 10k miners the JSON is large enough to matter in the event loop."""
        now = self.clock.monotonic()
        since = now - self._plan_saved_at
        if since < (PLAN_SAVE_MIN_SPACING_SECONDS if decision.commands else PLAN_SAVE_INTERVAL_SECONDS):
            return  # at most every few seconds: building the document is in the event loop
        self._plan_saved_at = now
        doc = plan_state.plan_document(decision.plan, self.tracker, now, self.clock.wall())
        try:
            await asyncio.to_thread(plan_state.save, self.config.site.state_dir, doc)
        except OSError as exc:
            log.error("plan_not_saved", path=str(self.config.site.state_dir), error=str(exc))

    def _status_line(self) -> str:
        d = self.loop.last
        if d is None:
            return "reading fleet"
        counts = collections.Counter(m.status for m in d.fleet.miners)
        meter = "n/a" if d.meter_watts is None else f"{d.meter_watts / 1000:.1f} kW"
        return (
            f"{'shadow' if self.shadow else 'control'}: budget {d.capped_budget_watts / 1000:.1f} kW "
            f"({d.budget.state}), draw {meter}, planned {d.plan.planned_watts / 1000:.1f} kW, "
            f"{counts[MinerStatus.MINING]} mining, {counts[MinerStatus.SLEEPING]} sleeping"
        )

    # ------------------------------------------------------------ reload / stop

    def reload(self) -> bool:
        """SIGHUP: adopt a new config if it is valid; otherwise keep the old one."""
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error(
                "config_reload_refused",
                path=str(self.config_path),
                problems=[str(p) for p in exc.problems],
            )
            self.notifier.ready(self._status_line())
            return False
        if new.mqtt != self.config.mqtt or new.metrics != self.config.metrics:
            log.warning(
                "config_reload_partial", detail="mqtt/metrics changes take effect after a restart"
            )
            new = new.model_copy(update={"mqtt": self.config.mqtt, "metrics": self.config.metrics})
        self.config = new
        self.tracker.reconfigure(new)
        self.loop.reconfigure(new)
        self.store.site = new.site
        fresh = dict(self._driver_factory(new, self.clock))
        for miner_id in fresh.keys() - self.drivers.keys():
            self.drivers[miner_id] = fresh[miner_id]
        for miner_id in self.drivers.keys() - fresh.keys():
            self._spawn(self.drivers.pop(miner_id).close())
        self.shadow = self.options.dry_run or new.site.mode == "shadow"
        self.actuator.dry_run = self.shadow
        self.metrics.set_flags(shadow_mode=self.shadow)
        log.info(
            "config_reloaded",
            path=str(self.config_path),
            miners=len(new.fleet.miners),
            mode=new.site.mode,
        )
        self.notifier.ready(self._status_line())
        self.loop.wake(urgent=True)
        return True

    def request_stop(self) -> None:
        self._stop.set()

    async def _shutdown(self) -> None:
        self.notifier.stopping("stopping")
        log.info("stopping", on_shutdown=self.config.site.on_shutdown)
        if self.config.site.on_shutdown == "sleep" and not self.shadow:
            ids = [
                m.miner_id
                for m in self.tracker.fleet_state(self.clock.monotonic()).miners
                if m.controllable
            ]
            results = await self.actuator.stop_all(ids)
            log.info("fleet_slept", miners=len(ids), ok=sum(r.ok for r in results))
        await self.actuator.drain()
        await self.link.publish(self.status_topic, OFFLINE_PAYLOAD, retain=True)

    # ------------------------------------------------------------ main

    async def run(self) -> int:
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            log.error(
                "config_invalid",
                path=str(self.config_path),
                problems=[str(p) for p in exc.problems],
            )
            return EX_CONFIG
        if self.options.metrics_port is not None:
            config = config.model_copy(
                update={"metrics": replace_port(config, self.options.metrics_port)}
            )
        self._background: set[asyncio.Task[Any]] = set()
        try:
            self._build(config)
        except (ValueError, CredentialsError) as exc:
            # e.g. plaintext to a remote broker without allow_insecure, unreadable secrets
            log.error("config_refused", error=str(exc))
            return EX_CONFIG
        open_files = raise_open_files_limit()  # kept miner connections are descriptors
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        log.info(
            "starting", config=str(self.config_path), miners=len(self.drivers), shadow=self.shadow,
            open_files_limit=open_files,
        )
        if config.metrics.enabled:
            self.metrics_port = await self.metrics.serve(config.metrics.listen, config.metrics.port)
            log.info(
                "metrics_serving", url=f"http://{config.metrics.listen}:{self.metrics_port}/metrics"
            )
        code = 0
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._supervise("mqtt", self.link.run)),
                    group.create_task(self._supervise("poller", self._poll_forever)),
                    group.create_task(self._supervise("control", self._control_forever)),
                    group.create_task(self._supervise("status", self._status_forever)),
                ]
                await self._stop.wait()
                await self._shutdown()
                for task in tasks:
                    task.cancel()
        except* CrashLoop as group_exc:
            log.error("crash_loop", error=str(group_exc.exceptions[0]))
            code = EX_SOFTWARE
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self.metrics.stop()
            for task in list(self._background):
                task.cancel()
            await close_drivers(self.drivers.values())
        log.info("stopped", exit_code=code)
        return code


def replace_port(config: HashgovConfig, port: int) -> Any:
    return config.metrics.model_copy(update={"port": port})
