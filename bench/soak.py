"""Scenario 5, soak (``--soak``): mixed load for ten minutes; do memory and streams stay flat?

The three services run with the first-message plan (email, signed webhook, status
page), SEV1 updates every 10 s, and retention cut short (streams and delivery log
kept 2 minutes, trimmed every 15 s) so that trimming runs during the soak. The load,
on a fixed schedule: new SEV1 incidents (``open_rate``/s), each resolved
``resolve_after`` seconds later, and resends of open alerts (``resend_rate``/s,
duplicates). Every
``sample_every`` seconds it samples the resident memory of ingest, dispatcher,
scheduler and Valkey, the length (XLEN) of every ``clarion:*`` stream, and the
consumer groups' backlog (pending + lag).

A series is called stable when the mean of its last third is within 10% (plus a
small absolute slack) of the mean of its middle third: the first third is warm-up.
"""

from __future__ import annotations

import asyncio
import base64
import os
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from bench.bodies import CLARION_PATH, Template, clarion_body, requests
from bench.environment import BenchEnv, pid_of
from bench.first_message import SECRET_ENV, webhook_plan
from bench.http_load import Pool
from bench.procstats import family_rss_mb, redis_pid
from bench.report import Figure, ScenarioResult
from shared.contracts import Severity
from shared.redis_values import as_text

NAME = "soak"
SLACK = {"rss": 3.0, "xlen": 200.0, "backlog": 50.0}


@dataclass(frozen=True)
class Options:
    minutes: float = 10.0
    sample_every: float = 10.0
    open_rate: float = 2.0  # new incidents per second
    resolve_after: float = 30.0  # seconds each stays open
    resend_rate: float = 2.0  # resends of an open incident's alert per second
    update_every: float = 10.0  # seconds between SEV1 updates: the scheduler's work
    retention: str = "2m"  # CLARION_STREAM_RETENTION and CLARION_DELIVERY_LOG_RETENTION
    retention_interval: str = "15s"


QUICK = Options(
    minutes=1.0, sample_every=5.0, resolve_after=10.0, retention="15s", retention_interval="5s"
)


async def _streams(redis: Redis) -> tuple[dict[str, int], int]:
    """XLEN of every clarion stream, and the consumer groups' backlog (pending + lag)."""
    lengths: dict[str, int] = {}
    backlog = 0
    async for key in redis.scan_iter(match="clarion:*", count=1000, _type="stream"):
        name = as_text(key)
        if name.startswith("clarion:delivery-index:"):
            continue  # one small stream per incident: counted by the delivery log's cut
        try:
            groups = await redis.xinfo_groups(name)
        except ResponseError:  # the stream went away since the scan
            continue
        lengths[name] = await redis.xlen(name)
        for group in groups:
            backlog += int(group.get("pending") or 0) + int(group.get("lag") or 0)
    return lengths, backlog


async def _sample(redis: Redis, pids: dict[str, int | None], started: float) -> dict[str, Any]:
    lengths, backlog = await _streams(redis)
    return {
        "t": round(time.monotonic() - started, 1),
        "rss_mb": {name: family_rss_mb(pid) for name, pid in pids.items()},  # with workers
        "xlen": lengths,
        "xlen_total": sum(lengths.values()),
        "backlog": backlog,
    }


def _verdict(values: list[float], slack: float) -> dict[str, Any]:
    third = len(values) // 3
    stable: bool | None = None
    if third:
        middle = statistics.fmean(values[third : 2 * third])
        last = statistics.fmean(values[2 * third :])
        stable = last <= middle * 1.1 + slack
    return {"first": values[0], "last": values[-1], "max": max(values), "stable": stable}


def _series(samples: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    series: dict[str, dict[str, Any]] = {}
    for name in samples[0]["rss_mb"]:
        values = [s["rss_mb"][name] for s in samples if s["rss_mb"][name] is not None]
        if values:
            series[f"{name} RSS (MB)"] = _verdict(values, SLACK["rss"])
    series["stream entries (XLEN, all)"] = _verdict(
        [float(s["xlen_total"]) for s in samples], SLACK["xlen"]
    )
    series["consumer backlog (pending + lag)"] = _verdict(
        [float(s["backlog"]) for s in samples], SLACK["backlog"]
    )
    return series


class Load:
    """Opens, resends and resolves on a schedule, without waiting for answers."""

    def __init__(self, port: int, options: Options) -> None:
        self.options = options
        self.pool = Pool("127.0.0.1", port)
        firing, resolved = clarion_body(1), clarion_body(1, resolved=True)
        self.open = self._maker(port, firing)
        self.resolve = self._maker(port, resolved)
        self.statuses: dict[int, int] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def _maker(port: int, template: Template) -> Any:
        return requests("127.0.0.1", port, CLARION_PATH, template, lambda n: f"soak-{n}")

    def _send(self, data: bytes) -> None:
        async def send() -> None:
            try:
                status, _ = await self.pool.request(data)
            except (ConnectionError, OSError):
                status = 0
            self.statuses[status] = self.statuses.get(status, 0) + 1

        task = asyncio.create_task(send())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self, seconds: float) -> dict[str, int]:
        o = self.options
        opened = resolved = resent = 0
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            while opened < int(elapsed * o.open_rate):
                self._send(self.open(opened))
                opened += 1
            while resolved < int(max(0.0, elapsed - o.resolve_after) * o.open_rate):
                self._send(self.resolve(resolved))
                resolved += 1
            while resent < int(elapsed * o.resend_rate) and opened > resolved:
                self._send(self.open(resolved + resent % (opened - resolved)))
                resent += 1
            await asyncio.sleep(0.05)  # the load's clock tick
        await asyncio.gather(*self.tasks)
        self.pool.close()
        return {"opened": opened, "resolved": resolved, "resent": resent}


async def run(env: BenchEnv, options: Options) -> ScenarioResult:
    await env.reset()
    directory = env.directory(NAME)
    every = timedelta(seconds=options.update_every)
    cadence = {s: every if s is Severity.CRITICAL else None for s in Severity}
    plan = webhook_plan(directory, f"{env.sinks.http_url}/hook/clarion", cadence)
    system = env.system(
        plan,
        directory,
        **{SECRET_ENV: "whsec_" + base64.b64encode(os.urandom(32)).decode()},
        CLARION_STREAM_RETENTION=options.retention,
        CLARION_DELIVERY_LOG_RETENTION=options.retention,
        CLARION_RETENTION_INTERVAL=options.retention_interval,
    )
    samples: list[dict[str, Any]] = []
    print(
        f"soak: {options.minutes:g} min, {options.open_rate:g} new incidents/s (resolved "
        f"after {options.resolve_after:g} s), {options.resend_rate:g} resends/s",
        flush=True,
    )
    try:
        env.start(system)
        pids = {name: pid_of(system[name]) for name in ("ingest", "dispatcher", "scheduler")}
        pids["valkey"] = await redis_pid(env.redis)
        load = Load(system.ingest_port, options)
        started = time.monotonic()
        sending = asyncio.create_task(load.run(options.minutes * 60))
        while not sending.done():
            samples.append(await _sample(env.redis, pids, started))
            last = samples[-1]
            print(
                f"  t={last['t']:>6.0f} s  RSS {last['rss_mb']}  XLEN {last['xlen_total']:,}"
                f"  backlog {last['backlog']:,}",
                flush=True,
            )
            await asyncio.wait({sending}, timeout=options.sample_every)
        counts = sending.result()
        samples.append(await _sample(env.redis, pids, started))
    finally:
        env.stop(system)
    series = _series(samples)
    figures = []
    for name, s in series.items():
        verdict = {True: "stable", False: "GREW", None: "too short to tell"}[s["stable"]]
        figures.append(
            Figure(
                NAME,
                f"{name} first / last / max",
                f"{s['first']:,.0f} / {s['last']:,.0f} / {s['max']:,.0f}: {verdict}",
                target="stable",
            )
        )
    data = {"load": counts, "answers": load.statuses, "series": series, "samples": samples}
    return ScenarioResult(NAME, figures, data, asdict(options))
