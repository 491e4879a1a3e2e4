"""What every ``clarion`` command shares: reading the settings and the plan, failing clearly."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer
from pydantic import ValidationError

from shared.plan import Plan, PlanError, load_plan
from shared.settings import Settings


def fail(message: str) -> NoReturn:
    """Print ``message`` on stderr and exit with status 1."""
    typer.echo(message, err=True)
    raise typer.Exit(1)


def settings_or_fail() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"CLARION_{'_'.join(str(p) for p in error['loc']).upper()}: {error['msg']}"
            for error in exc.errors()
        )
        fail(f"Invalid configuration: {problems}")


def plan_or_fail(path: Path | None) -> Plan:
    """The plan at ``path`` (None: the shipped default); an invalid one names file and line."""
    try:
        return load_plan(path)
    except PlanError as exc:
        fail(str(exc))
