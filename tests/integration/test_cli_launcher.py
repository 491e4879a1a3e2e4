"""The supervisor behind ``clarion up``, with small stand-in children.

Each stand-in reports ``<name> <pid>`` over TCP to the test once it runs, then
blocks in ``signal.pause()``; the test awaits those reports, never the clock.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.launcher import (
    Backoff,
    ChildExit,
    ChildSpec,
    Supervisor,
    running_instance,
    unavailable_ports,
    wait_until_ready,
    write_runtime_file,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

WITHIN = 20.0

# Reports to the test, then behaves as told by its mode:
#   block         wait for a signal (SIGTERM ends it)
#   stubborn      ignore SIGTERM, wait for SIGKILL
#   exit-first    exit 0 on its first run (as FastStream does when its group vanishes),
#                 block on later runs; runs are counted in a file
#   exit          always exit 3 at once
CHILD = """
import os, signal, socket, sys
name, port, mode, runs_file = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
with open(runs_file, "a") as f:
    f.write("run\\n")
with open(runs_file) as f:
    runs = len(f.read().splitlines())
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
with socket.create_connection(("127.0.0.1", port)) as sock:
    sock.sendall(f"{name} {os.getpid()}\\n".encode())
if mode == "exit" or (mode == "exit-first" and runs == 1):
    sys.exit(3 if mode == "exit" else 0)
while True:
    signal.pause()
"""


@dataclass
class Reports:
    """Children's "I am running" reports, received over TCP."""

    port: int
    queue: asyncio.Queue[tuple[str, int]] = field(default_factory=asyncio.Queue)

    async def next(self) -> tuple[str, int]:
        return await asyncio.wait_for(self.queue.get(), timeout=WITHIN)


@pytest.fixture
async def reports() -> AsyncIterator[Reports]:
    queue: asyncio.Queue[tuple[str, int]] = asyncio.Queue()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        name, pid = (await reader.readline()).decode().split()
        await queue.put((name, int(pid)))
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield Reports(port=port, queue=queue)


def child(name: str, mode: str, reports: Reports, tmp_path: Path) -> ChildSpec:
    argv = (sys.executable, "-c", CHILD, name, str(reports.port), mode, str(tmp_path / name))
    return ChildSpec(name=name, argv=argv, env=dict(os.environ), log_path=tmp_path / f"{name}.log")


def is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_starts_every_child_and_stops_them_all_on_stop(
    reports: Reports, tmp_path: Path
) -> None:
    stop = asyncio.Event()
    supervisor = Supervisor(
        [child("one", "block", reports, tmp_path), child("two", "block", reports, tmp_path)], stop
    )
    run = asyncio.create_task(supervisor.run())

    seen = dict([await reports.next(), await reports.next()])

    assert seen == supervisor.pids
    assert set(seen) == {"one", "two"}
    stop.set()
    await asyncio.wait_for(run, timeout=WITHIN)
    assert supervisor.returncodes == {"one": -signal.SIGTERM, "two": -signal.SIGTERM}
    assert all(is_gone(pid) for pid in seen.values())
    assert supervisor.pids == {}
    assert supervisor.starts == {"one": 1, "two": 1}


async def test_restarts_a_child_that_exits_unexpectedly_even_with_code_zero(
    reports: Reports, tmp_path: Path
) -> None:
    stop = asyncio.Event()
    exits: list[ChildExit] = []
    supervisor = Supervisor(
        [
            child("flaky", "exit-first", reports, tmp_path),
            child("calm", "block", reports, tmp_path),
        ],
        stop,
        backoff=Backoff(initial=0.05),
        on_exit=exits.append,
    )
    run = asyncio.create_task(supervisor.run())

    first = [await reports.next(), await reports.next(), await reports.next()]

    flaky_pids = [pid for name, pid in first if name == "flaky"]
    assert len(flaky_pids) == 2, first
    assert flaky_pids[0] != flaky_pids[1]
    assert supervisor.pids["flaky"] == flaky_pids[1]
    assert [(e.name, e.pid, e.returncode) for e in exits] == [("flaky", flaky_pids[0], 0)]
    assert exits[0].restart_in_seconds == pytest.approx(0.05)
    assert supervisor.starts == {"flaky": 2, "calm": 1}
    stop.set()
    await asyncio.wait_for(run, timeout=WITHIN)
    assert (tmp_path / "flaky.log").read_text().count("--- clarion: starting flaky") == 2


async def test_kills_a_child_that_ignores_sigterm(reports: Reports, tmp_path: Path) -> None:
    stop = asyncio.Event()
    supervisor = Supervisor(
        [child("stubborn", "stubborn", reports, tmp_path)], stop, stop_timeout=0.5
    )
    run = asyncio.create_task(supervisor.run())
    _, pid = await reports.next()

    stop.set()
    await asyncio.wait_for(run, timeout=WITHIN)

    assert supervisor.returncodes == {"stubborn": -signal.SIGKILL}
    assert is_gone(pid)


async def test_force_stop_kills_without_waiting_for_the_stop_timeout(
    reports: Reports, tmp_path: Path
) -> None:
    stop = asyncio.Event()
    # A stop timeout far beyond the test's patience: only force_stop can end this in time.
    supervisor = Supervisor(
        [child("stubborn", "stubborn", reports, tmp_path)], stop, stop_timeout=600
    )
    run = asyncio.create_task(supervisor.run())
    await reports.next()

    stop.set()
    supervisor.force_stop()
    await asyncio.wait_for(run, timeout=WITHIN)

    assert supervisor.returncodes == {"stubborn": -signal.SIGKILL}


async def test_stop_interrupts_the_backoff_before_a_restart(
    reports: Reports, tmp_path: Path
) -> None:
    stop = asyncio.Event()
    exited = asyncio.Event()
    # The backoff is far beyond the test's patience: only the stop event can end the wait.
    supervisor = Supervisor(
        [child("crasher", "exit", reports, tmp_path)],
        stop,
        backoff=Backoff(initial=600),
        on_exit=lambda _: exited.set(),
    )
    run = asyncio.create_task(supervisor.run())
    await reports.next()
    await asyncio.wait_for(exited.wait(), timeout=WITHIN)

    stop.set()
    await asyncio.wait_for(run, timeout=WITHIN)

    assert supervisor.returncodes == {"crasher": 3}
    assert supervisor.starts == {"crasher": 1}


def test_backoff_doubles_up_to_its_maximum() -> None:
    backoff = Backoff(initial=0.5, factor=2.0, maximum=3.0)

    assert [backoff.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_child_names_must_be_unique(tmp_path: Path) -> None:
    spec = ChildSpec(name="same", argv=(sys.executable, "-c", "pass"), env={})

    with pytest.raises(ValueError, match="unique"):
        Supervisor([spec, spec], asyncio.Event())


async def test_wait_until_ready_reports_what_never_answered() -> None:
    async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(app, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with_nothing = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    dead_port = with_nothing.sockets[0].getsockname()[1]
    with_nothing.close()
    await with_nothing.wait_closed()
    async with server:
        not_ready = await wait_until_ready(
            {"up": f"http://127.0.0.1:{port}/readyz", "down": f"http://127.0.0.1:{dead_port}/"},
            within=1.0,
        )

    assert not_ready == ["down"]


async def test_wait_until_ready_gives_up_when_told() -> None:
    loop = asyncio.get_running_loop()
    failed: asyncio.Future[None] = loop.create_future()
    failed.set_result(None)

    not_ready = await wait_until_ready({"x": "http://127.0.0.1:9/"}, within=600, unless=[failed])

    assert not_ready == ["x"]


async def test_unavailable_ports_names_a_port_in_use() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        problems = unavailable_ports({"busy": ("127.0.0.1", port), "free": ("127.0.0.1", 0)})

    assert set(problems) == {"busy"}


def test_runtime_file_names_only_a_live_instance(tmp_path: Path) -> None:
    write_runtime_file(tmp_path, "redis://127.0.0.1:1234")

    # Written by this very process: not "another" running instance.
    assert running_instance(tmp_path) is None
    assert not (tmp_path / "up.json").exists()

    parent = os.getppid()
    (tmp_path / "up.json").write_text(f'{{"pid": {parent}, "redis_url": "redis://h:1"}}')
    found = running_instance(tmp_path)
    assert found is not None
    assert (found.pid, found.redis_url) == (parent, "redis://h:1")


def test_runtime_file_of_a_dead_instance_is_removed(tmp_path: Path) -> None:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait(timeout=WITHIN)
    (tmp_path / "up.json").write_text(f'{{"pid": {finished.pid}, "redis_url": "redis://h:1"}}')

    assert running_instance(tmp_path) is None
    assert not (tmp_path / "up.json").exists()


async def test_cancelling_the_supervisor_leaves_no_child_behind(
    reports: Reports, tmp_path: Path
) -> None:
    supervisor = Supervisor([child("orphan", "stubborn", reports, tmp_path)], asyncio.Event())
    run = asyncio.create_task(supervisor.run())
    _, pid = await reports.next()

    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run

    # The child was SIGKILLed; the event loop's child watcher reaps it.
    await eventually(lambda: is_gone_async(pid), within=WITHIN, what=f"pid {pid} gone")


async def is_gone_async(pid: int) -> bool:
    return is_gone(pid)
