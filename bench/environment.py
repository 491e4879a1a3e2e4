"""What every scenario runs against: one Redis, the sinks, a temp dir, service processes.

Redis is an embedded Valkey (``shared.embedded``: AOF with ``appendfsync always``,
as ``clarion up`` runs it) unless ``CLARION_REDIS_URL`` names one; between
scenarios :meth:`BenchEnv.reset` empties it (the whole database when embedded,
only ``clarion:*`` keys otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from bench.sinks import Sinks
from shared.embedded import start_embedded_valkey
from shared.streams import PREFIX
from tests.support.processes import ServiceProcess, System

COMPACT_TIMEOUT_SECONDS = 120.0
"""The longest wait for the embedded Valkey's append-only file to be compacted."""

QUIET_SERVICES: Mapping[str, str] = {
    "CLARION_LOG_LEVEL": "WARNING",  # one log line per request would be measured too
    "CLARION_INGEST_RATE_LIMIT": "1000000/second",  # the default 100/s would cap ingest
    "CLARION_WEBHOOK_ALLOW_PRIVATE": "true",  # the webhook sink is on loopback
}


class ProfiledProcess(ServiceProcess):
    """A service run under cProfile (:mod:`bench.profiled_service`: main-thread CPU time);
    the profile is written when it stops (SIGTERM)."""

    profile_path: Path | None = None

    def start(self) -> None:
        self.starts += 1
        self.profile_path = self.log_dir / f"{self.name}-{self.starts}.prof"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "bench.profiled_service"),
                    *(self.name, str(self.profile_path)),
                ],
                env=dict(self.env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )


@dataclass
class BenchEnv:
    tmp: Path
    redis_url: str
    embedded: bool
    sinks: Sinks
    redis: Redis
    profile: Sequence[str] = ()  # service names to run under cProfile
    workers: int = 1  # processes per ingest and per dispatcher (CLARION_*_WORKERS)
    profiles: list[Path] = field(default_factory=list)
    _runs: int = 0

    async def reset(self) -> None:
        """Forget every key a previous scenario left. The embedded Valkey also compacts
        its append-only file and waits for that to end: otherwise the rewrite a previous
        scenario's writes call for (a fork, then seconds of disk and CPU) lands in the
        next one (seen as one message in a hundred 180 ms late)."""
        if self.embedded:
            await self.redis.flushdb()
            await self._compact()
            return
        batch: list[Any] = []
        async for key in self.redis.scan_iter(match=f"{PREFIX}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await self.redis.unlink(*batch)
                batch.clear()
        if batch:
            await self.redis.unlink(*batch)

    async def _compact(self) -> None:
        with contextlib.suppress(ResponseError):  # one already running: wait for it
            await self.redis.bgrewriteaof()
        deadline = time.monotonic() + COMPACT_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            state = await self.redis.info("persistence")
            if not state.get("aof_rewrite_in_progress") and not state.get("aof_rewrite_scheduled"):
                return
            await asyncio.sleep(0.1)  # a benchmark polls; tests never sleep

    def directory(self, name: str) -> Path:
        self._runs += 1
        path = self.tmp / f"{self._runs:02d}-{name}"
        path.mkdir()
        return path

    def system(self, plan: Path, log_dir: Path, **env: str) -> System:
        """The three services (not started) on this Redis, the sinks' SMTP, ``plan``; ingest
        and the dispatcher run :attr:`workers` processes each unless ``env`` says otherwise."""
        system = System(
            env={
                **QUIET_SERVICES,
                "CLARION_INGEST_WORKERS": str(self.workers),
                "CLARION_DISPATCHER_WORKERS": str(self.workers),
                "CLARION_REDIS_URL": self.redis_url,
                "CLARION_SMTP_HOST": self.sinks.smtp_host,
                "CLARION_SMTP_PORT": str(self.sinks.smtp_port),
                "CLARION_PLAN": str(plan),
                **env,
            },
            log_dir=log_dir,
        )
        for name in self.profile:
            service = system.services[name]
            system.services[name] = ProfiledProcess(
                service.name, service.env, service.log_dir, service.ready_url
            )
        return system

    def start(
        self, system: System, names: Sequence[str] = ("ingest", "dispatcher", "scheduler")
    ) -> None:
        """Start ``names`` of ``system`` and wait until each is ready."""
        for name in names:
            system[name].start()
        for name in names:
            system[name].wait_ready(60.0)

    def stop(self, system: System) -> None:
        system.stop()
        for service in system.services.values():
            profile = service.profile_path if isinstance(service, ProfiledProcess) else None
            if profile is not None and profile.exists():
                self.profiles.append(profile)


def pid_of(service: ServiceProcess) -> int | None:
    return service.process.pid if service.process is not None else None


@asynccontextmanager
async def bench_environment(
    profile: Sequence[str] = (), workers: int = 1
) -> AsyncIterator[BenchEnv]:
    """Redis (embedded unless ``CLARION_REDIS_URL``), the sinks and a temp dir, for a run."""
    external = os.environ.get("CLARION_REDIS_URL")
    with tempfile.TemporaryDirectory(prefix="clarion-bench-") as tmp:
        valkey = None if external else start_embedded_valkey(Path(tmp) / "valkey")
        url = external if valkey is None else str(valkey.connection_url)
        assert url is not None
        sinks = Sinks(Path(tmp))
        redis = Redis.from_url(url)
        try:
            sinks.start()
            yield BenchEnv(Path(tmp), url, external is None, sinks, redis, profile, workers)
        finally:
            await redis.aclose()
            await sinks.aclose()
            sinks.stop()
            if valkey is not None:
                valkey.stop()
