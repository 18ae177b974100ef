"""The `hashgov` command line. Each sub-command lives in its own module; this
file only wires them together so that importing it stays cheap."""

from __future__ import annotations

import typer

from controller import cli_config

app = typer.Typer(
    name="hashgov",
    help="Keep a mining site's power draw inside the surplus a power plant grants it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
sim_app = typer.Typer(help="Hardware simulators: miners that speak real firmware protocols, a plant.",
                      no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print JSON (last line) against an in-run baseline.",
                        no_args_is_help=True)
app.add_typer(sim_app, name="sim")
app.add_typer(bench_app, name="bench")

cli_config.register(app)


def _register_optional() -> None:
    """Sub-commands from other modules; each module exposes register(app) or register(sub_app)."""
    from controller import cli_plan

    cli_plan.register(app, bench_app)


_register_optional()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
