"""What a process on this machine is using: CPU time, resident memory (from /proc)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from redis.asyncio import Redis

TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()  # fields from the 3rd (state) on


def family(pid: int | None) -> list[int]:
    """``pid`` and every live process descended from it (a service's worker processes)."""
    if pid is None:
        return []
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo.extend(int(child) for child in task.read_text().split())
            except (OSError, ValueError):
                continue
    return found


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of ``pid`` and its descendants so far: the live ones, and
    those that ended and were waited for (0.0 when nothing can be read)."""
    total = 0.0
    for number, member in enumerate(family(pid)):
        fields = _stat_fields(member)
        if fields is None:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        if number == 0:
            total += int(fields[13]) + int(fields[14])  # cutime, cstime: waited-for children
    return total / TICKS


def _proc_kb(pid: int | None, file: str, name: str) -> float | None:
    """The ``name:`` line's kB figure in ``/proc/<pid>/<file>`` (status, smaps_rollup)."""
    if pid is None:
        return None
    try:
        lines = Path(f"/proc/{pid}/{file}").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(name + ":"):
            return float(line.split()[1])
    return None


def _status_kb(pid: int | None, name: str) -> float | None:
    return _proc_kb(pid, "status", name)


def rss_mb(pid: int | None) -> float | None:
    """Resident memory now (VmRSS), in MB."""
    kb = _status_kb(pid, "VmRSS")
    return None if kb is None else round(kb / 1024, 1)


def peak_rss_mb(pid: int | None) -> float | None:
    """The most resident memory so far (VmHWM), in MB."""
    kb = _status_kb(pid, "VmHWM")
    return None if kb is None else round(kb / 1024, 1)


def _family_mb(pid: int | None, measure: Callable[[int], float | None]) -> float | None:
    sizes = [mb for member in family(pid) if (mb := measure(member)) is not None]
    return round(sum(sizes), 1) if sizes else None


def family_rss_mb(pid: int | None) -> float | None:
    """Resident memory now of ``pid`` and its live descendants together, in MB."""
    return _family_mb(pid, rss_mb)


def pss_mb(pid: int | None) -> float | None:
    """Proportional resident memory now (Pss, MB): pages shared with other processes (the
    interpreter, libraries) count as a share each, so the sum over processes is what they
    hold together, where the sum of RSS counts each shared page once per process."""
    kb = _proc_kb(pid, "smaps_rollup", "Pss")
    return None if kb is None else round(kb / 1024, 1)


def family_pss_mb(pid: int | None) -> float | None:
    """Proportional resident memory now of ``pid`` and its live descendants together, MB."""
    return _family_mb(pid, pss_mb)


def family_peak_rss_mb(pid: int | None) -> dict[int, float]:
    """The peak resident memory (VmHWM, MB) of ``pid`` and each live descendant."""
    peaks = {member: peak_rss_mb(member) for member in family(pid)}
    return {member: mb for member, mb in peaks.items() if mb is not None}


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
