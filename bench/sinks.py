"""The sinks process (:mod:`bench.sink_server`) seen from the benchmark: start, stop, read."""

from __future__ import annotations

import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import httpx

from tests.support.processes import free_port

HOST = "127.0.0.1"


class Sinks:
    """An HTTP sink and an SMTP sink on loopback, in a child process."""

    def __init__(self, log_dir: Path) -> None:
        self.http_port = free_port()
        self.smtp_port = free_port()
        self.log_path = log_dir / "sinks.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._client = httpx.AsyncClient(timeout=60)

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def host(self) -> str:
        return HOST

    @property
    def smtp_host(self) -> str:
        return HOST

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, within: float = 20.0) -> None:
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "bench.sink_server"),
                    *("--http-port", str(self.http_port), "--smtp-port", str(self.smtp_port)),
                ],
                stdout=subprocess.PIPE,
                stderr=log,
            )
        assert self._process.stdout is not None
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the sinks exited: {self.log_path.read_text()}")
            ready, _, _ = select.select([self._process.stdout], [], [], 0.2)
            if ready and self._process.stdout.readline().strip() == b"ready":
                return
        raise RuntimeError(f"the sinks did not start within {within} s")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def arrivals(self, kind: str, after: int = 0) -> tuple[int, list[list[Any]]]:
        """(how many arrived in all, ``[monotonic, path or recipient, key]`` from ``after``)."""
        answer = await self._client.get(
            f"{self.http_url}/_sink/arrivals", params={"kind": kind, "after": after}
        )
        answer.raise_for_status()
        data = answer.json()
        return int(data["total"]), cast(list[list[Any]], data["items"])

    async def counts(self) -> dict[str, Any]:
        """``{"http": {path: n}, "smtp": n}``."""
        answer = await self._client.get(f"{self.http_url}/_sink/counts")
        answer.raise_for_status()
        return cast(dict[str, Any], answer.json())
