"""Process supervision for ``clarion up``: start children, restart the ones that die, stop all.

A :class:`Supervisor` keeps one process per :class:`ChildSpec` running until its stop
event is set. A child that exits while the supervisor is not stopping is unexpected,
whatever its exit code (FastStream exits 0 when its consumer group vanishes), and is
started again after an exponential backoff. On stop every child gets SIGTERM, and
SIGKILL if it is still running after ``stop_timeout`` seconds.

Each child runs in its own process group, so a Ctrl-C in the terminal reaches only
the supervisor, which then stops the children in order instead of all at once.

Also here: the checks around a start (:func:`unavailable_ports` before,
:func:`wait_until_ready` after) and the embedded Valkey's runtime file, which tells
``clarion outbox`` (and a second ``clarion up``) where a running Valkey listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from shared.embedded import start_embedded_valkey
from shared.logs import get_logger

log = get_logger("clarion.launcher")
_POLL_SECONDS = 0.2
RUNTIME_FILE = "up.json"  # in the data dir while `clarion up` runs an embedded Valkey


@dataclass(frozen=True)
class ChildSpec:
    """One process to keep running: its name, command line and environment.

    ``log_path``: append the child's stdout and stderr to this file; ``None`` lets
    the child write to the supervisor's own stdout and stderr.
    """

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    log_path: Path | None = None


@dataclass(frozen=True)
class Backoff:
    """How long to wait before starting a dead child again.

    The delay doubles from ``initial`` up to ``maximum`` with each consecutive
    failure. A child that ran for ``reset_after`` seconds or more counts as healthy,
    so its next failure starts again from ``initial``.
    """

    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 30.0
    reset_after: float = 60.0

    def delay(self, consecutive_failures: int) -> float:
        """The wait before restart number ``consecutive_failures`` (counting from 1)."""
        exponent = max(consecutive_failures - 1, 0)
        return float(min(self.initial * self.factor**exponent, self.maximum))


@dataclass(frozen=True)
class ChildExit:
    """A child that exited while it should have been running."""

    name: str
    pid: int
    returncode: int
    uptime_seconds: float
    restart_in_seconds: float


@dataclass
class _ChildState:
    spec: ChildSpec
    process: asyncio.subprocess.Process | None = None
    starts: int = 0
    returncode: int | None = None


@dataclass
class Supervisor:
    """Keep every child running until ``stop`` is set, then stop them all.

    ``on_start(name, pid)`` runs after each start, ``on_exit(ChildExit)`` after each
    unexpected exit (before the backoff wait).
    """

    children: Sequence[ChildSpec]
    stop: asyncio.Event
    backoff: Backoff = field(default_factory=Backoff)
    stop_timeout: float = 10.0
    on_start: Callable[[str, int], None] | None = None
    on_exit: Callable[[ChildExit], None] | None = None
    _states: dict[str, _ChildState] = field(init=False)
    _force: asyncio.Event = field(init=False, default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        names = [spec.name for spec in self.children]
        if len(set(names)) != len(names):
            raise ValueError(f"child names must be unique, got {names}")
        self._states = {spec.name: _ChildState(spec) for spec in self.children}

    @property
    def pids(self) -> dict[str, int]:
        """The process id of every child that is running now."""
        return {
            name: state.process.pid
            for name, state in self._states.items()
            if state.process is not None and state.process.returncode is None
        }

    @property
    def starts(self) -> dict[str, int]:
        """How many times each child was started."""
        return {name: state.starts for name, state in self._states.items()}

    @property
    def returncodes(self) -> dict[str, int | None]:
        """The last exit code of each child (negative: killed by that signal)."""
        return {name: state.returncode for name, state in self._states.items()}

    def force_stop(self) -> None:
        """Stop now: SIGKILL whatever is still running instead of waiting for it."""
        self._force.set()
        self.stop.set()

    async def run(self) -> None:
        """Run until ``stop`` is set and every child has exited."""
        async with asyncio.TaskGroup() as group:
            for state in self._states.values():
                group.create_task(self._keep_running(state), name=f"supervise-{state.spec.name}")

    async def _keep_running(self, state: _ChildState) -> None:
        try:
            await self._restart_until_stopped(state)
        except BaseException:
            # Cancelled or failed: never leave a child behind, running unsupervised.
            if state.process is not None and state.process.returncode is None:
                _signal_group(state.process, signal.SIGKILL)
            raise

    async def _restart_until_stopped(self, state: _ChildState) -> None:
        failures = 0
        loop = asyncio.get_running_loop()
        while not self.stop.is_set():
            process = await self._spawn(state)
            started_at = loop.time()
            if not await _first(process.wait(), self.stop.wait()):
                await self._terminate(state, process)
                return
            state.returncode = process.returncode
            uptime = loop.time() - started_at
            failures = 1 if uptime >= self.backoff.reset_after else failures + 1
            delay = self.backoff.delay(failures)
            exit_info = ChildExit(
                name=state.spec.name,
                pid=process.pid,
                returncode=process.returncode if process.returncode is not None else -1,
                uptime_seconds=uptime,
                restart_in_seconds=delay,
            )
            log.warning(
                "child.exited",
                child=exit_info.name,
                pid=exit_info.pid,
                returncode=exit_info.returncode,
                uptime_seconds=round(uptime, 3),
                restart_in_seconds=delay,
            )
            if self.on_exit is not None:
                self.on_exit(exit_info)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=delay)

    async def _spawn(self, state: _ChildState) -> asyncio.subprocess.Process:
        spec = state.spec
        if spec.log_path is None:
            process = await _exec(spec, None)
        else:
            spec.log_path.parent.mkdir(parents=True, exist_ok=True)
            with spec.log_path.open("ab") as log_file:
                stamp = datetime.now(UTC).isoformat(timespec="seconds")
                log_file.write(f"--- clarion: starting {spec.name} at {stamp}\n".encode())
                log_file.flush()
                process = await _exec(spec, log_file.fileno())
        state.process = process
        state.starts += 1
        state.returncode = None
        log.info("child.started", child=spec.name, pid=process.pid, start=state.starts)
        if self.on_start is not None:
            self.on_start(spec.name, process.pid)
        return process

    async def _terminate(self, state: _ChildState, process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            _signal_group(process, signal.SIGTERM)
            if not await self._exited_in_time(process):
                log.warning("child.killed", child=state.spec.name, pid=process.pid)
                _signal_group(process, signal.SIGKILL)
        await process.wait()
        state.returncode = process.returncode
        log.info("child.stopped", child=state.spec.name, returncode=process.returncode)

    async def _exited_in_time(self, process: asyncio.subprocess.Process) -> bool:
        if self._force.is_set():
            return False
        try:
            async with asyncio.timeout(self.stop_timeout):
                return await _first(process.wait(), self._force.wait())
        except TimeoutError:
            return False


async def _exec(spec: ChildSpec, output: int | None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *spec.argv,
        env=dict(spec.env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=output,
        stderr=output,
        process_group=0,
    )


def _signal_group(process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    """Signal the child and anything it started (its process group is its pid)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


async def _first(
    wanted: Coroutine[Any, Any, object],
    other: Coroutine[Any, Any, object],
) -> bool:
    """Run two coroutines until one finishes; True if it was ``wanted``.

    The other one is cancelled.
    """
    wanted_task = asyncio.ensure_future(wanted)
    other_task = asyncio.ensure_future(other)
    try:
        done, _ = await asyncio.wait({wanted_task, other_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (wanted_task, other_task):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    return wanted_task in done


async def wait_until_ready(
    urls: Mapping[str, str], *, within: float, unless: Sequence[asyncio.Future[Any]] = ()
) -> list[str]:
    """Poll each readiness URL until it answers 200.

    Returns the names whose URL is not ready yet: empty once all are, non-empty when
    ``within`` seconds have passed or any future in ``unless`` is done first.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    pending = dict(urls)
    async with httpx.AsyncClient(timeout=2.0) as client:
        while pending and loop.time() < deadline and not any(f.done() for f in unless):
            for name, url in list(pending.items()):
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(url)).status_code == 200:
                        del pending[name]
            if pending and unless:
                await asyncio.wait(unless, timeout=_POLL_SECONDS)
            elif pending:
                await asyncio.sleep(_POLL_SECONDS)
    return list(pending)


def unavailable_ports(addresses: Mapping[str, tuple[str, int]]) -> dict[str, str]:
    """The addresses (by name) nothing could listen on now, with the reason."""
    problems = {}
    for name, (host, port) in addresses.items():
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                problems[name] = exc.strerror or str(exc)
    return problems


def start_valkey_shielded(data_dir: Path) -> Any:
    """Start the embedded Valkey with SIGINT blocked, so a Ctrl-C in the terminal does not
    stop it before the services that use it; its owner stops it last, with SIGTERM."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return start_embedded_valkey(data_dir)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@dataclass(frozen=True)
class RunningInstance:
    pid: int
    redis_url: str


def write_runtime_file(data_dir: Path, redis_url: str) -> None:
    """Record this process and its Valkey URL (readable by the owner only)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / RUNTIME_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"pid": os.getpid(), "redis_url": redis_url}, handle)


def remove_runtime_file(data_dir: Path) -> None:
    (data_dir / RUNTIME_FILE).unlink(missing_ok=True)


def running_instance(data_dir: Path) -> RunningInstance | None:
    """The live `clarion up` that uses ``data_dir``, if any (a stale record is removed)."""
    path = data_dir / RUNTIME_FILE
    try:
        record = json.loads(path.read_text())
        instance = RunningInstance(pid=int(record["pid"]), redis_url=str(record["redis_url"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if instance.pid != os.getpid() and _alive(instance.pid):
        return instance
    path.unlink(missing_ok=True)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True
