"""Placeholder wiring for `hashgov plan` and `hashgov bench policy` (filled by the policy work)."""

from __future__ import annotations

import typer


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    return None
