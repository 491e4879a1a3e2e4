"""What `clarion up` does once Valkey is running: supervise, wait, print, demo.

The typer command in :mod:`services.cli` parses options and starts Valkey; this
module runs the three services under a :class:`services.launcher.Supervisor`,
waits until they are ready, prints where to look, and plays the ``--demo``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import signal
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import typer

from services.launcher import ChildExit, ChildSpec, Supervisor, wait_until_ready
from shared.plan import Plan
from shared.redaction import redact_text
from shared.settings import Settings

SERVICES = ("ingest", "dispatcher", "scheduler")
SAMPLES_DIR = Path(__file__).resolve().parent / "ingest" / "samples"
FIRING_SAMPLE = SAMPLES_DIR / "alertmanager_firing.json"
RESOLVED_SAMPLE = SAMPLES_DIR / "alertmanager_resolved.json"
READY_LINE = "Clarion is ready."


@dataclass(frozen=True)
class Endpoints:
    """Where the local services answer, as a client on this machine reaches them."""

    ingest: str
    dispatcher: str
    scheduler: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Endpoints:
        return cls(
            ingest=_base_url(settings.ingest_host, settings.ingest_port),
            dispatcher=_base_url(settings.dispatcher_host, settings.dispatcher_port),
            scheduler=_base_url(settings.scheduler_host, settings.scheduler_port),
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
    def ops_pages(self) -> str:
        return f"{self.dispatcher}/ops"

    @property
    def scheduler_metrics(self) -> str:
        return f"{self.scheduler}/metrics"

    @property
    def readiness(self) -> dict[str, str]:
        return {
            "ingest": f"{self.ingest}/readyz",
            "dispatcher": f"{self.dispatcher}/readyz",
            "scheduler": f"{self.scheduler}/readyz",
        }


def listen_addresses(settings: Settings) -> dict[str, tuple[str, int]]:
    """Where each service will listen, by the setting that moves it."""
    return {
        "CLARION_INGEST_PORT": (settings.ingest_host, settings.ingest_port),
        "CLARION_DISPATCHER_PORT": (settings.dispatcher_host, settings.dispatcher_port),
        "CLARION_SCHEDULER_PORT": (settings.scheduler_host, settings.scheduler_port),
    }


def _base_url(host: str, port: int) -> str:
    reachable = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
    if ":" in reachable:
        reachable = f"[{reachable}]"
    return f"http://{reachable}:{port}"


@dataclass(frozen=True)
class UpOptions:
    settings: Settings
    endpoints: Endpoints
    redis_note: str
    plan: Plan
    plan_source: str
    log_dir: Path | None
    demo: bool
    resolve_after: float
    startup_timeout: float


async def run_up(specs: list[ChildSpec], options: UpOptions) -> int:
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


def _banner(options: UpOptions) -> str:
    endpoints, settings = options.endpoints, options.settings
    auth = (
        ' \\\n    -H "Authorization: Bearer $CLARION_INGEST_TOKEN"' if settings.ingest_token else ""
    )
    curl = (
        f"  curl -sS -X POST {endpoints.webhook} \\\n"
        f"    -H 'Content-Type: application/json'{auth} \\\n"
        f"    --data-binary @{shlex.quote(str(FIRING_SAMPLE))}"
    )
    plan = options.plan
    if settings.smtp_host:
        email = f"via {settings.smtp_host}:{settings.smtp_port}"
    else:
        email = "no SMTP server configured: queued locally"
    messages = (
        f"{len(plan.audiences)} audiences, {len(plan.routes)} routes from {options.plan_source}; "
        f"email {email}; channels without credentials go to `clarion outbox`"
    )
    ops = " (needs Authorization: Bearer $CLARION_OPS_TOKEN)" if settings.ops_token else ""
    sign_in = " (sign in with $CLARION_OPS_TOKEN)" if settings.ops_token else ""
    logs = "in this terminal" if options.log_dir is None else f"{options.log_dir}/<service>.log"
    return "\n".join(
        [
            "",
            READY_LINE,
            "",
            f"  Alertmanager webhook:  {endpoints.webhook}",
            f"  Status page:           {endpoints.status_page}",
            f"  Ops pages:             {endpoints.ops_pages}{sign_in}",
            f"  Delivery log (API):    {endpoints.deliveries}{ops}",
            f"  Scheduler metrics:     {endpoints.scheduler_metrics}",
            f"  Plan:                  {messages}",
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


async def _run_demo(options: UpOptions, stop: asyncio.Event) -> None:
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
            "  Messages: `clarion outbox` (or your providers)\n"
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
                f"  The incident is now monitoring; it is announced resolved after "
                f"the plan's monitoring_hold ({_duration(options.plan.monitoring_hold)}).\n"
                f"  See it on {endpoints.status_page} and in `clarion outbox`."
            )


def _duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    return f"{seconds // 60} min" if seconds >= 60 and seconds % 60 == 0 else f"{seconds} s"


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


def redis_note(redis_url: str, *, embedded: bool, data_dir: Path) -> str:
    if embedded:
        return f"embedded Valkey at {redis_url}, append-only data in {data_dir / 'valkey'}"
    return redact_text(redis_url)
