"""Clarion's services as real child processes, for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.smtp import free_port

__all__ = ["ServiceProcess", "System", "free_port", "process_environ", "worker_pids"]


@dataclass
class ServiceProcess:
    """One service (``python -m services.<name>``) with its log in ``log_dir``."""

    name: str
    env: Mapping[str, str]
    log_dir: Path
    ready_url: str | None = None
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.name}"],
                env=dict(self.env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, within: float = 30.0) -> None:
        """Block until the service answers its readiness URL (or, without one, is alive)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            self._assert_alive()
            if self.ready_url is None:
                return
            try:
                if httpx.get(self.ready_url, timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # bounded poll of a readiness URL: noqa: sleep-ok
        raise AssertionError(f"{self.name} not ready within {within}s\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up, as in a crash."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _assert_alive(self) -> None:
        assert self.process is not None, f"{self.name} was never started"
        code = self.process.poll()
        if code is not None:
            raise AssertionError(f"{self.name} exited with {code}\n{self.log_tail()}")


@dataclass
class System:
    """Ingest, dispatcher and scheduler, wired to one Redis and one SMTP server."""

    env: dict[str, str]
    log_dir: Path
    ingest_port: int = field(default_factory=free_port)
    dispatcher_port: int = field(default_factory=free_port)
    scheduler_port: int = field(default_factory=free_port)
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
        env = {
            **base,
            **self.env,
            "CLARION_INGEST_PORT": str(self.ingest_port),
            "CLARION_DISPATCHER_PORT": str(self.dispatcher_port),
            "CLARION_SCHEDULER_PORT": str(self.scheduler_port),
            "CLARION_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }
        self.services = {
            "ingest": ServiceProcess("ingest", env, self.log_dir, f"{self.ingest_url}/readyz"),
            "dispatcher": ServiceProcess(
                "dispatcher", env, self.log_dir, f"{self.dispatcher_url}/readyz"
            ),
            "scheduler": ServiceProcess(
                "scheduler", env, self.log_dir, f"http://127.0.0.1:{self.scheduler_port}/readyz"
            ),
        }

    @property
    def ingest_url(self) -> str:
        return f"http://127.0.0.1:{self.ingest_port}"

    @property
    def dispatcher_url(self) -> str:
        return f"http://127.0.0.1:{self.dispatcher_port}"

    def __getitem__(self, name: str) -> ServiceProcess:
        return self.services[name]

    def start(self) -> None:
        for service in self.services.values():
            service.start()
        for service in self.services.values():
            service.wait_ready()

    def stop(self) -> None:
        for service in self.services.values():
            service.stop()

    def logs(self) -> str:
        return "\n".join(
            f"--- {name} ---\n{service.log_tail()}" for name, service in self.services.items()
        )


def worker_pids(pid: int) -> set[int]:
    """The worker processes of the service whose parent is ``pid`` (Linux ``/proc``).

    Only uvicorn's workers (started with multiprocessing's ``spawn``), not the
    resource tracker that multiprocessing also starts.
    """
    children: set[int] = set()
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                children.update(int(c) for c in (task / "children").read_text().split())
    return {child for child in children if b"spawn_main" in _proc_file(child, "cmdline")}


def process_environ(pid: int) -> dict[str, str]:
    """The environment process ``pid`` started with (Linux ``/proc``; empty once it is gone)."""
    pairs = (item.partition(b"=") for item in _proc_file(pid, "environ").split(b"\0") if item)
    return {name.decode(): value.decode(errors="replace") for name, _, value in pairs}


def _proc_file(pid: int, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return b""
