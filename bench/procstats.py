"""What a process on this machine is using: CPU time, resident memory (from /proc)."""

from __future__ import annotations

import os
from pathlib import Path

from redis.asyncio import Redis

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of ``pid`` so far (0.0 when it cannot be read)."""
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15)


def _status_kb(pid: int | None, name: str) -> float | None:
    if pid is None:
        return None
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(name + ":"):
            return float(line.split()[1])
    return None


def rss_mb(pid: int | None) -> float | None:
    """Resident memory now (VmRSS), in MB."""
    kb = _status_kb(pid, "VmRSS")
    return None if kb is None else round(kb / 1024, 1)


def peak_rss_mb(pid: int | None) -> float | None:
    """The most resident memory so far (VmHWM), in MB."""
    kb = _status_kb(pid, "VmHWM")
    return None if kb is None else round(kb / 1024, 1)


async def redis_pid(redis: Redis) -> int | None:
    """The Redis/Valkey server's process id, when it runs on this machine."""
    info = await redis.info("server")
    pid = info.get("process_id")
    host = redis.connection_pool.connection_kwargs.get("host", "")
    local = host in ("127.0.0.1", "localhost", "::1") or "path" in (
        redis.connection_pool.connection_kwargs
    )
    return int(pid) if pid is not None and local else None


class CpuMeter:
    """CPU seconds used by some processes between ``start()`` and ``stop()``."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self._before: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> None:
        self._before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        self.used = {
            name: round(cpu_seconds(pid) - self._before[name], 3) for name, pid in self.pids.items()
        }
        return self.used
