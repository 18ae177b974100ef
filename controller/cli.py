"""The `hashgov` command line. Each sub-command lives in its own module; this
file only wires them together so that importing it stays cheap."""

from __future__ import annotations

import typer

from controller import cli_config, cli_run

app = typer.Typer(
    name="hashgov",
    help="Keep a mining site's power draw inside the surplus a power plant grants it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
sim_app = typer.Typer(
    help="Hardware simulators: miners that speak real firmware protocols, a plant.",
    no_args_is_help=True,
)
bench_app = typer.Typer(
    help="Benchmarks that print JSON (last line) against an in-run baseline.", no_args_is_help=True
)
app.add_typer(sim_app, name="sim")
app.add_typer(bench_app, name="bench")

cli_run.register(app)
cli_config.register(app)


def _register_optional() -> None:
    """Sub-commands from other modules; each module exposes register(app) or register(sub_app)."""
    from controller import cli_plan
    from simulators import demo

    demo.register(app)

    cli_plan.register(app, bench_app)
    from simulators.bench import poll_bench

    poll_bench.register(bench_app)
    from simulators.bench import scenario as bench_scenario

    bench_scenario.register(bench_app)
    from simulators.miners import cli as sim_miners_cli

    sim_miners_cli.register(sim_app)
    from simulators.plant import cli as sim_plant_cli

    sim_plant_cli.register(sim_app)


_register_optional()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
