"""``clarion up`` as a newcomer runs it: embedded Valkey, three services, Ctrl-C.

The command runs as a real process with CLARION_REDIS_URL unset, its data in a
temporary directory and its services on free ports.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from services.dispatcher.outbox import OutboxMessage, read_outbox
from services.launcher import RUNTIME_FILE, ChildSpec, unavailable_ports
from services.local_run import (
    FIRING_SAMPLE,
    READY_LINE,
    Endpoints,
    UpOptions,
    run_up,
)
from shared.settings import Settings
from tests.support.plans import make_plan, write_plan
from tests.support.smtp import free_port
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

STARTUP = 90.0
TOKEN = "up-test-token-3f9a"


@dataclass
class Up:
    process: asyncio.subprocess.Process
    data_dir: Path
    ingest_port: int
    dispatcher_port: int
    scheduler_port: int
    banner: list[str]

    async def stop(self, sig: signal.Signals = signal.SIGINT) -> tuple[int, str]:
        """Signal ``clarion up``; its exit code and the rest of its output."""
        if self.process.returncode is None:
            self.process.send_signal(sig)
        rest, _ = await asyncio.wait_for(self.process.communicate(), timeout=60)
        assert self.process.returncode is not None
        return self.process.returncode, rest.decode()


@asynccontextmanager
async def running_up(
    tmp_path: Path, *options: str, env_extra: dict[str, str] | None = None
) -> AsyncIterator[Up]:
    """``clarion up *options`` as a process, once it has printed that it is ready."""
    ingest_port, dispatcher_port, scheduler_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
    env.update(
        {
            "CLARION_DATA_DIR": str(tmp_path / "data"),
            "CLARION_INGEST_PORT": str(ingest_port),
            "CLARION_DISPATCHER_PORT": str(dispatcher_port),
            "CLARION_SCHEDULER_PORT": str(scheduler_port),
            "CLARION_INGEST_TOKEN": TOKEN,
            "CLARION_LOG_FORMAT": "json",
            **(env_extra or {}),
        }
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "up",
        *options,
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    banner: list[str] = []
    running = Up(process, tmp_path / "data", ingest_port, dispatcher_port, scheduler_port, banner)
    try:
        async with asyncio.timeout(STARTUP):
            assert process.stdout is not None
            while READY_LINE not in banner:
                line = await process.stdout.readline()
                assert line, f"clarion up ended before it was ready:\n{''.join(banner)}"
                banner.append(line.decode().rstrip("\n"))
            while banner[-1] != "Press Ctrl-C to stop.":
                banner.append((await process.stdout.readline()).decode().rstrip("\n"))
        yield running
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.fixture
async def up(tmp_path: Path) -> AsyncIterator[Up]:
    async with running_up(tmp_path) as running:
        yield running


async def test_up_serves_alerts_then_stops_cleanly_on_ctrl_c(up: Up) -> None:
    text = "\n".join(up.banner)
    webhook = f"http://127.0.0.1:{up.ingest_port}/v1/alerts/alertmanager"
    assert webhook in text
    assert f"http://127.0.0.1:{up.dispatcher_port}/status" in text
    assert f"http://127.0.0.1:{up.dispatcher_port}/v1/deliveries" in text
    assert f"http://127.0.0.1:{up.scheduler_port}/metrics" in text
    # The curl command names the token's variable, never its value.
    assert '"Authorization: Bearer $CLARION_INGEST_TOKEN"' in text
    assert TOKEN not in text
    assert f"@{FIRING_SAMPLE}" in text
    assert "from the shipped default plan" in text
    assert "channels without credentials go to `clarion outbox`" in text
    runtime = json.loads((up.data_dir / RUNTIME_FILE).read_text())
    assert (up.data_dir / "valkey").is_dir()

    async with httpx.AsyncClient(timeout=10) as client:
        # Ready before the banner, as ingest and the dispatcher are.
        ready = await client.get(f"http://127.0.0.1:{up.scheduler_port}/readyz")
        assert ready.status_code == 200, ready.text
        response = await client.post(
            webhook,
            content=FIRING_SAMPLE.read_bytes(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        )
    assert response.status_code == 202, response.text
    incident_id = response.json()["incident_id"]

    redis = Redis.from_url(runtime["redis_url"])
    try:

        async def opened_email() -> list[OutboxMessage]:
            return [
                e
                for e in await read_outbox(redis, channel="email", limit=100)
                if e.incident_id == incident_id and e.to == "customer@example.invalid"
            ]

        async def opened_sms() -> list[OutboxMessage]:
            found = await read_outbox(redis, channel="sms")
            return [e for e in found if e.incident_id == incident_id]

        emails = await eventually(opened_email, within=30, what="the opening email")
        # The SMS goes out beside the email, on its own channel: it may come just after.
        sms = await eventually(opened_sms, within=30, what="the opening SMS")
    finally:
        await redis.aclose()
    # No SMTP server, no providers: the outbox shows what the default plan's placeholder
    # customers would get, on every channel the plan routes a SEV1 to.
    assert emails[0].subject.startswith("Investigating:")
    assert sms
    assert sms[0].to == "+15555550100"

    code, rest = await up.stop(signal.SIGINT)

    assert code == 0, rest
    assert "Clarion stopped." in rest
    assert not (up.data_dir / RUNTIME_FILE).exists()
    ports = {
        "ingest": ("127.0.0.1", up.ingest_port),
        "dispatcher": ("127.0.0.1", up.dispatcher_port),
        "scheduler": ("127.0.0.1", up.scheduler_port),
    }
    assert unavailable_ports(ports) == {}
    host, port = runtime["redis_url"].removeprefix("redis://").split(":")
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(host, int(port))


async def test_up_stops_cleanly_on_sigterm(up: Up) -> None:
    code, rest = await up.stop(signal.SIGTERM)

    assert code == 0, rest
    assert "Clarion stopped." in rest
    assert "child.killed" not in rest  # every service stopped within its grace period


async def test_a_second_up_with_the_same_data_dir_is_refused(up: Up) -> None:
    env = clean_env(
        CLARION_INGEST_PORT=str(free_port()),
        CLARION_DISPATCHER_PORT=str(free_port()),
        CLARION_SCHEDULER_PORT=str(free_port()),
    )
    second = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "up",
        "--data-dir",
        str(up.data_dir),
        cwd=up.data_dir.parent,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(second.communicate(), timeout=60)

    assert second.returncode == 1
    assert "already running" in err.decode()
    code, _ = await up.stop()
    assert code == 0


def clean_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
    env.update(values)
    return env


async def test_up_refuses_a_port_in_use_and_names_the_setting(tmp_path: Path) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    busy = server.sockets[0].getsockname()[1]
    async with server:
        process = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "services.cli", "up"],
            cwd=tmp_path,
            env=clean_env(
                CLARION_DATA_DIR=str(tmp_path / "data"),
                CLARION_INGEST_PORT=str(busy),
                CLARION_DISPATCHER_PORT=str(free_port()),
            ),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(process.communicate(), timeout=60)

    assert process.returncode == 1
    assert f"127.0.0.1:{busy}" in err.decode()
    assert "CLARION_INGEST_PORT" in err.decode()
    assert not (tmp_path / "data" / "valkey").exists()  # refused before starting anything


async def test_a_service_dying_during_startup_stops_everything_and_shows_its_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(
        _env_file=None,
        redis_url="redis://127.0.0.1:9/0",
        ingest_port=free_port(),
        dispatcher_port=free_port(),
    )
    crash = "import sys; print('boom: bad configuration', file=sys.stderr); sys.exit(3)"
    block = "import signal; signal.pause()"
    logs = tmp_path / "logs"
    specs = [
        ChildSpec("ingest", (sys.executable, "-c", crash), dict(os.environ), logs / "ingest.log"),
        ChildSpec("scheduler", (sys.executable, "-c", block), dict(os.environ), logs / "sch.log"),
    ]
    options = UpOptions(
        settings=settings,
        endpoints=Endpoints.from_settings(settings),
        redis_note="test",
        plan=make_plan(),
        plan_source="test plan",
        log_dir=logs,
        demo=False,
        resolve_after=0,
        startup_timeout=600,  # only the crash can end startup within the test's patience
    )

    code = await asyncio.wait_for(run_up(specs, options), timeout=60)

    assert code == 1
    err = capsys.readouterr().err
    assert "ingest exited with code 3 during startup." in err
    assert "boom: bad configuration" in err
    assert READY_LINE not in capsys.readouterr().out


async def test_demo_sends_an_alert_then_resolves_it(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, monitoring_hold=timedelta(seconds=1))  # then resolved
    hold = {"CLARION_PLAN": str(plan)}
    async with running_up(tmp_path, "--demo", "--resolve-after", "1", env_extra=hold) as up:
        runtime = json.loads((up.data_dir / RUNTIME_FILE).read_text())
        redis = Redis.from_url(runtime["redis_url"])
        try:

            async def opening_and_resolution() -> list[str]:
                subjects = [e.subject for e in await read_outbox(redis)]
                resolved = any(s.startswith("Resolved:") for s in subjects)
                opened = any(s.startswith("Investigating:") for s in subjects)
                return subjects if resolved and opened else []

            await eventually(opening_and_resolution, within=60, what="the demo's two emails")
        finally:
            await redis.aclose()
        code, rest = await up.stop(signal.SIGINT)
    assert code == 0, rest
    assert "Demo: sent a firing alert" in rest
    assert "Demo: sent the resolved alert" in rest
