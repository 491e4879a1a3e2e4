"""``clarion deliveries``: against the delivery routes served on loopback with an ops
token, over a real Valkey; ``--follow`` also as a separate process stopped by Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import structlog
import typer
from fastapi import FastAPI
from redis.asyncio import Redis
from starlette.types import Message, Receive, Scope, Send
from typer.testing import CliRunner

from services.delivery_commands import deliveries_app
from services.dispatcher.delivery_log import DeliveryLog
from services.dispatcher.delivery_routes import deliveries_router, metrics_router
from shared.contracts import DeliveryRecorded, DeliveryStatus
from shared.http_errors import install_error_handlers
from shared.settings import Settings
from tests.support.asgi import serving_in_thread
from tests.support.smtp import free_port

pytestmark = pytest.mark.integration

OPS = "ops-secret"
T0 = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]
# ``clarion`` wires the command in as ``app.add_typer(deliveries_app)``; so does this.
cli = typer.Typer()
cli.add_typer(deliveries_app)
RUN_COMMAND = "from services.delivery_commands import deliveries_app; deliveries_app()"
# Ctrl-C as a terminal delivers it. A process started from a shell's background job
# inherits SIGINT ignored (POSIX), and Python then never raises KeyboardInterrupt: the
# follower would not stop, whatever the CLI does (seen when the suite ran in the background).
RUN_AS_FROM_A_TERMINAL = (
    "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); " + RUN_COMMAND
)

Hook = Callable[[DeliveryLog], Awaitable[None]]


def record(
    n: int,
    incident_id: str = "inc-1",
    *,
    channel: str = "email",
    status: DeliveryStatus = DeliveryStatus.SENT,
    at: datetime | None = None,
    **extra: Any,
) -> DeliveryRecorded:
    recorded = at or T0 + timedelta(seconds=n)
    values: dict[str, Any] = {
        "delivery_id": f"d-{n}",
        "incident_id": incident_id,
        "event_id": f"ev-{n}",
        "channel": channel,
        "recipient": "alice@example.com",
        "status": status,
        "attempt": 1,
        "audience": "customers",
        "started_at": recorded,
        "recorded_at": recorded,
    }
    return DeliveryRecorded.model_validate(values | extra)


@dataclass(frozen=True)
class ApiState:
    """What the delivery routes read from the dispatcher's state."""

    settings: Settings
    delivery_log: DeliveryLog


class Observed:
    """The dispatcher's ASGI app, watched: tells when a follower has polled, and can
    record a delivery after the history page is read but before it is answered."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.polled_after = threading.Event()
        self.before_history_answer: Hook | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/deliveries":
            await self.app(scope, receive, send)
            return
        query = parse_qs(scope["query_string"].decode())
        hook, self.before_history_answer = self.before_history_answer, None
        if "after" in query or hook is None:
            await self.app(scope, receive, send)
            if "after" in query:
                self.polled_after.set()
            return
        log: DeliveryLog = self.app.state.dispatcher.delivery_log

        async def send_after_hook(message: Message) -> None:
            if message["type"] == "http.response.start":
                await hook(log)
            await send(message)

        await self.app(scope, receive, send_after_hook)


def dispatcher_api(settings: Settings, redis_url: str) -> FastAPI:
    """The delivery routes as the dispatcher mounts them, with their own Redis client."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = Redis.from_url(redis_url)
        app.state.dispatcher = ApiState(settings, DeliveryLog(redis))
        try:
            yield
        finally:
            await redis.aclose()

    app = FastAPI(lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(deliveries_router)
    app.include_router(metrics_router)
    return app


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CLARION_ setting from the outside and no .env in the way."""
    monkeypatch.chdir(tmp_path)
    for variable in list(os.environ):
        if variable.startswith("CLARION_"):
            monkeypatch.delenv(variable)


@pytest.fixture
def dispatcher(
    clean_env: None,
    redis: Redis,
    redis_url: str,
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Observed]:
    """The routes on a free loopback port; the CLI finds them through the environment."""
    observed = Observed(dispatcher_api(make_settings(ops_token=OPS), redis_url))
    with serving_in_thread(observed, lifespan="on") as url:
        monkeypatch.setenv("CLARION_DISPATCHER_PORT", str(urlsplit(url).port))
        monkeypatch.setenv("CLARION_OPS_TOKEN", OPS)
        yield observed


async def write(redis: Redis, *records: DeliveryRecorded) -> None:
    """Record deliveries; their log lines are kept out of the command's captured output."""
    log = DeliveryLog(redis)
    with structlog.testing.capture_logs():
        for one in records:
            await log.record(one)


def json_ids(output: str) -> list[str]:
    return [json.loads(line)["delivery_id"] for line in output.splitlines() if line.strip()]


async def test_the_table_shows_every_column_newest_first(
    dispatcher: Observed, redis: Redis
) -> None:
    await write(
        redis,
        record(
            1,
            channel="sms",
            recipient="+14155550100",
            status=DeliveryStatus.RETRYING,
            error="Twilio 20429: too many requests",
            latency_ms=123.4,
            possible_duplicate=True,
        ),
        record(
            2,
            latency_ms=80.0,
            provider_message_id="<m2@example.org>",
            note="no credentials: sent to the local outbox",
        ),
    )

    result = CliRunner().invoke(cli, ["deliveries"])

    assert result.exit_code == 0, result.output
    out = result.stdout
    for column in ("time", "incident", "channel", "audience", "recipient", "status", "attempt"):
        assert column in out
    assert "latency" in out
    assert "provider id" in out
    assert "error / note" in out
    assert "2026-11-23 14:30:02" in out
    assert "a***@example.com" in out
    assert "alice@example.com" not in out
    assert "+*******0100" in out
    assert "123 ms" in out
    assert "80 ms" in out
    assert "<m2@example.org>" in out
    assert "no credentials: sent to the local outbox" in out
    assert "Twilio 20429: too many requests; possible duplicate" in out
    assert out.index("<m2@example.org>") < out.index("Twilio 20429")  # newest first
    assert result.stderr == ""  # no older page


async def test_json_lines_with_filters(dispatcher: Observed, redis: Redis) -> None:
    await write(
        redis,
        record(0, status=DeliveryStatus.FAILED),
        record(1, status=DeliveryStatus.SENT),
        record(2, channel="sms", status=DeliveryStatus.DEAD),
        record(3, "inc-2", status=DeliveryStatus.DEAD),
        record(4, status=DeliveryStatus.DEAD),
    )
    args = ["deliveries", "--json", "--incident", "inc-1", "-s", "failed", "-s", "dead"]

    both = CliRunner().invoke(cli, args)
    email = CliRunner().invoke(cli, [*args, "--channel", "email"])

    assert both.exit_code == 0, both.output
    assert json_ids(both.stdout) == ["d-4", "d-2", "d-0"]
    assert json_ids(email.stdout) == ["d-4", "d-0"]
    first = json.loads(both.stdout.splitlines()[0])
    assert (first["status"], first["recipient"]) == ("dead", "a***@example.com")


async def test_since_takes_a_duration_or_a_time(dispatcher: Observed, redis: Redis) -> None:
    now = datetime.now(UTC)
    await write(
        redis,
        record(0, at=now - timedelta(hours=3)),
        record(1, at=now - timedelta(minutes=90)),
        record(2, at=now - timedelta(minutes=10)),
    )
    two_hours_ago = (now - timedelta(hours=2)).replace(tzinfo=None).isoformat()  # UTC

    last_hour = CliRunner().invoke(cli, ["deliveries", "--json", "--since", "1h"])
    since_time = CliRunner().invoke(cli, ["deliveries", "--json", "--since", two_hours_ago])
    until = CliRunner().invoke(cli, ["deliveries", "--json", "--until", "1h"])

    assert last_hour.exit_code == 0, last_hour.output
    assert json_ids(last_hour.stdout) == ["d-2"]
    assert json_ids(since_time.stdout) == ["d-2", "d-1"]
    assert json_ids(until.stdout) == ["d-1", "d-0"]


async def test_limit_pages_with_the_printed_cursor(dispatcher: Observed, redis: Redis) -> None:
    await write(redis, *(record(n) for n in range(5)))

    first = CliRunner().invoke(cli, ["deliveries", "--json", "--limit", "3"])
    cursor = first.stderr.split("--before ")[1].strip()
    second = CliRunner().invoke(cli, ["deliveries", "--json", "--limit", "3", "--before", cursor])

    assert json_ids(first.stdout) == ["d-4", "d-3", "d-2"]
    assert second.exit_code == 0, second.output
    assert json_ids(second.stdout) == ["d-1", "d-0"]
    assert second.stderr == ""


async def test_nothing_matching_says_so(dispatcher: Observed) -> None:
    result = CliRunner().invoke(cli, ["deliveries", "--incident", "nope"])

    assert result.exit_code == 0, result.output
    assert "No deliveries match." in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "soon"], "--since: 'soon' is neither a duration"),
        (["--follow", "--before", "YzE6MS0w"], "cannot be used with --follow"),
        (["--before", "garbage"], "422"),
    ],
)
def test_bad_options_fail_clearly(dispatcher: Observed, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["deliveries", *args])

    assert result.exit_code == 1
    assert message in result.stderr


def test_a_wrong_token_is_refused(dispatcher: Observed, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLARION_OPS_TOKEN", "wrong")

    result = CliRunner().invoke(cli, ["deliveries"])

    assert result.exit_code == 1
    assert "401" in result.stderr


def test_an_unreachable_dispatcher_fails_clearly(
    clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLARION_DISPATCHER_PORT", str(free_port()))

    result = CliRunner().invoke(cli, ["deliveries"])

    assert result.exit_code == 1
    assert "Cannot reach the dispatcher" in result.stderr


async def test_follow_prints_history_then_new_records_oldest_first(
    dispatcher: Observed, redis: Redis
) -> None:
    await write(redis, record(0))
    args = ["deliveries", "--follow", "--channel", "email", "--interval", "0.05"]

    following = asyncio.create_task(
        asyncio.to_thread(CliRunner().invoke, cli, [*args, "--max-records", "3"])
    )
    assert await asyncio.to_thread(dispatcher.polled_after.wait, 15.0), "no poll"
    await write(redis, record(1, channel="sms"), record(2), record(3, status=DeliveryStatus.FAILED))
    result = await asyncio.wait_for(following, timeout=15.0)

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["time", "incident", "channel"]
    assert [line.split()[1] for line in lines[1:]] == ["14:30:00", "14:30:02", "14:30:03"]
    assert "failed" in lines[3]
    assert "sms" not in result.stdout


async def next_ids(stream: asyncio.StreamReader, count: int) -> list[str]:
    """The delivery ids of the next ``count`` JSON lines of ``stream``."""
    got = []
    for _ in range(count):
        line = await asyncio.wait_for(stream.readline(), timeout=15.0)
        got.append(json.loads(line)["delivery_id"])
    return got


async def test_follow_in_a_process_misses_nothing_and_stops_on_ctrl_c(
    dispatcher: Observed, redis: Redis, tmp_path: Path
) -> None:
    await write(redis, record(0), record(1))

    async def recorded_meanwhile(log: DeliveryLog) -> None:  # after the history is read
        await log.record(record(2))

    dispatcher.before_history_answer = recorded_meanwhile
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
    env |= {
        "CLARION_DISPATCHER_PORT": os.environ["CLARION_DISPATCHER_PORT"],
        "CLARION_OPS_TOKEN": OPS,
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        RUN_AS_FROM_A_TERMINAL,
        *("--follow", "--json", "--interval", "0.05"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        history_and_meanwhile = await next_ids(process.stdout, 3)
        assert await asyncio.to_thread(dispatcher.polled_after.wait, 15.0), "no poll"
        await write(redis, record(3, channel="sms"), record(4))
        live = await next_ids(process.stdout, 2)
        process.send_signal(signal.SIGINT)
        await asyncio.wait_for(process.wait(), timeout=15.0)
        rest = await process.stdout.read()
        stderr = (await process.stderr.read()).decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert history_and_meanwhile == ["d-0", "d-1", "d-2"]
    assert live == ["d-3", "d-4"]
    assert process.returncode == 0
    assert "Traceback" not in stderr
    assert rest == b""  # nothing repeated
