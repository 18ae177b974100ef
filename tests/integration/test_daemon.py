"""The daemon end to end: real mosquitto, simulated miners via unmodified pyasic,
plant telemetry over MQTT. Figures come from the simulator's truth."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from simulators.miners.testing import eventually
from simulators.site import SiteTiming
from tests.support.site import running_site
from tests.unit.test_metrics_dashboard import DASHBOARD, _exprs, metric_names

# 6 miners: 2 × S19j Pro braiins (3000 W max), 2 × S19j Pro luxos (3050 W), 2 × S21 braiins (3500 W)
FULL_FLEET_WATTS = 2 * 3000 + 2 * 3050 + 2 * 3500


async def scrape(port: int) -> dict[str, float]:
    """GET /metrics over HTTP (in a thread: the server runs in this event loop)."""

    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    body = await asyncio.to_thread(get)
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            key = sample.name + ("" if not sample.labels else str(sorted(sample.labels.items())))
            out[key] = sample.value
    return out


async def test_follows_budget_down_and_up_and_fails_safe(tmp_path: Path) -> None:
    timing = SiteTiming(stale_after_seconds=2.0, grace_seconds=1.0)
    async with running_site(tmp_path, base_ip="127.20.0.1", surplus_kw=30.0, timing=timing) as site:
        # ample surplus: everything mines at full power
        await eventually(
            lambda: site.true_watts() > FULL_FLEET_WATTS * 0.97,
            timeout_seconds=20,
            what="full power",
        )

        # step down: true draw under the new budget within the settling time + a period
        site.feeder.surplus_kw = 10.0
        dropped_at = time.monotonic()
        await eventually(
            lambda: site.true_watts() <= 10_000, timeout_seconds=15, what="draw under 10 kW"
        )
        shed_seconds = time.monotonic() - dropped_at
        assert shed_seconds < 10, shed_seconds
        status = site.service.loop.last
        assert status is not None and status.plan.planned_watts <= 10_000

        # step up: load rises again (staged by the ramp), never above the budget
        site.feeder.surplus_kw = 20.0
        await eventually(
            lambda: site.true_watts() > 15_000, timeout_seconds=30, what="raise to 20 kW"
        )
        assert site.true_watts() <= 20_000 * 1.02

        # metrics over HTTP agree with the controller
        port = site.service.metrics_port
        assert port is not None
        metrics = await scrape(port)
        assert metrics["hashgov_budget_watts"] == 20_000
        # every metric the Grafana dashboard queries is exported by this running daemon
        exported = {name.split("[")[0] for name in metrics}
        exported |= {n.removesuffix("_bucket") for n in exported} | {n.removesuffix("_count") for n in exported}
        wanted: set[str] = set()
        for expr in _exprs(json.loads(DASHBOARD.read_text())):
            wanted |= {n for n in metric_names(expr) if n.startswith(("hashgov_", "process_"))}
        missing = sorted(n for n in wanted if n not in exported and f"{n}_bucket" not in exported)
        assert not missing, f"dashboard queries metrics the daemon does not export: {missing}"
        assert metrics["hashgov_fail_safe_active"] == 0
        assert metrics["hashgov_commands_total[('kind', 'set_power_limit'), ('result', 'ok')]"] >= 1

        # telemetry stops: after stale + grace the fail-safe (0 kW) sheds everything
        site.feeder.publishing = False
        stopped_at = time.monotonic()
        await eventually(
            lambda: site.service.loop.last is not None and site.service.loop.last.budget.fail_safe,
            timeout_seconds=10,
            what="fail-safe",
        )
        engaged = time.monotonic() - stopped_at
        assert 2.5 <= engaged <= 6.0, engaged
        await eventually(
            lambda: site.true_watts() < 6 * 100, timeout_seconds=15, what="fleet asleep"
        )
        assert (await scrape(port))["hashgov_fail_safe_active"] == 1


async def test_shadow_mode_sends_nothing(tmp_path: Path) -> None:
    async with running_site(tmp_path, base_ip="127.20.1.1", surplus_kw=5.0, dry_run=True) as site:
        await eventually(lambda: site.service.decisions >= 3, timeout_seconds=10, what="decisions")
        await asyncio.sleep(0)  # let any (wrongly) started command run
        assert site.service.actuator.would_send, "shadow mode still decides"
        assert site.true_watts() > FULL_FLEET_WATTS * 0.97, "but nothing was sent"


async def test_start_reads_fleet_then_raises_in_stages_most_efficient_first(tmp_path: Path) -> None:
    # the fleet starts asleep; budget for about half of it; ramp 4 kW/s
    timing = SiteTiming(ramp_up_kw_per_second=4.0)
    async with running_site(
        tmp_path, base_ip="127.20.2.1", surplus_kw=9.0, timing=timing, start_mining=False
    ) as site:
        first = site.service.loop.last
        assert first is not None
        samples: list[tuple[float, float]] = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 4.0:
            d = site.service.loop.last
            assert d is not None
            samples.append((d.at_seconds, d.plan.planned_watts))
            await asyncio.sleep(0.1)
        start_at, start_watts = samples[0]
        for at, watts in samples:
            # planned draw never rises faster than the ramp (plus one control period of slack)
            assert watts <= start_watts + 4_000 * (at - start_at + 1.0) + 1, (at - start_at, watts)
        await eventually(lambda: site.true_watts() > 7_000, timeout_seconds=40, what="raised to the budget")
        assert site.true_watts() <= 9_000
        plan = site.service.loop.last.plan  # type: ignore[union-attr]
        running = {m.miner_id for m in plan.miners if m.action == "run"}
        s21 = {s.name for s in site.specs if s.model == "Antminer S21"}
        assert s21 <= running, "the most efficient miners (S21, 17.5 J/TH) run first"


async def test_start_without_telemetry_holds_then_fails_safe(tmp_path: Path) -> None:
    """At start the budget is unknown, not zero: the fleet is left as it is until
    stale_after + grace have passed without a surplus sample; then the fail-safe."""
    timing = SiteTiming(stale_after_seconds=2.0, grace_seconds=1.0)
    async with running_site(tmp_path, base_ip="127.20.3.1", timing=timing, publishing=False) as site:
        first = site.service.loop.last
        assert first is not None and first.budget.fail_safe
        assert site.service.store.latest("surplus") is None
        await eventually(lambda: site.true_watts() < 600, timeout_seconds=15, what="fail-safe shed")


async def test_start_with_telemetry_does_not_shed_first(tmp_path: Path) -> None:
    async with running_site(tmp_path, base_ip="127.20.4.1", surplus_kw=30.0) as site:
        first = site.service.loop.last
        assert first is not None and not first.budget.fail_safe
        assert not any(w.sheds for w in first.commands), "an ample budget at start sheds nothing"
        assert site.true_watts() > FULL_FLEET_WATTS * 0.97
