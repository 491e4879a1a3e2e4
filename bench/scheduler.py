"""Scheduler at scale: 100,000 update-due items fired by 1, then 3 scheduler processes.

For each run it starts the scheduler processes (``python -m services.scheduler``)
against the benchmark's Redis (embedded Valkey: AOF, ``appendfsync always``, as
``clarion up``),
writes N open SEV1 incidents and their pending update (pipelined, in the
scheduler's schedule keys) with due times spread evenly over ``--window``
seconds starting ``--lead`` seconds later, and waits until every item has fired
(its next update re-armed 30 minutes on). It then reads ``clarion:updates-due``
and prints the firing lateness (``UpdateDue.emitted_at - due_at``, both on the
scheduler's clock) at p50 / p99 / max, the firing rate, and whether any item
fired twice (distinct event ids against stream entries). Run on its own it only
prints; ``make bench`` (``python -m bench.run_all``) runs it among the other
scenarios and writes ``bench/results/scheduler.json``.

    .venv/bin/python -m bench.scheduler [--items 100000] [--window 60] [--lead 10]
        [--instances 1 3] [--tick-ms 250] [--lease-ms 30000]

``--tick-ms`` and ``--lease-ms`` default to the production defaults. Lateness
below the tick interval is the tick itself; above it, the items came due faster
than the instances fire them and waited their turn.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from redis.asyncio import Redis

from bench.environment import BenchEnv, bench_environment
from bench.report import Figure, ScenarioResult, ms, table
from services.scheduler.cadence import ScheduleItem, ceil_ms
from shared.contracts import Severity, UpdateDue
from shared.settings import Settings
from shared.streams import INCIDENTS_BY_TIME, SCHEDULE_DUE, SCHEDULE_ITEMS, UPDATES_DUE
from shared.streams import incident_key as key_of
from tests.support.builders import make_incident
from tests.support.plans import write_plan
from tests.support.processes import ServiceProcess, free_port
from tests.support.streams import StreamEntries, decode_entry

NAME = "scheduler"


@dataclass(frozen=True)
class Options:
    items: int = 100_000
    window: float = 60.0  # seconds the due times span
    lead: float = 10.0  # seconds to the first due time
    instances: tuple[int, ...] = (1, 3)
    tick_ms: int = 250
    lease_ms: int = 30_000


QUICK = Options(items=2_000, window=3.0, lead=2.0)
PIPELINE_ITEMS = 2_000
READ_PAGE = 10_000


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _redis_now(redis: Redis) -> datetime:
    seconds, microseconds = await redis.time()
    return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=microseconds)


async def _write_incidents(redis: Redis, count: int, opened_at: datetime) -> None:
    template = make_incident(id="inc-0000000", key="group-0000000", opened_at=opened_at)
    raw = template.model_dump_json()
    for start in range(0, count, PIPELINE_ITEMS):
        async with redis.pipeline(transaction=False) as pipe:
            for n in range(start, min(count, start + PIPELINE_ITEMS)):
                incident_id = f"inc-{n:07}"
                pipe.set(
                    key_of(incident_id),
                    raw.replace("inc-0000000", incident_id).replace("group-0000000", f"g-{n:07}"),
                )
                pipe.zadd(INCIDENTS_BY_TIME, {incident_id: opened_at.timestamp()})
            await pipe.execute()


async def _write_schedule(
    redis: Redis, count: int, first_due: datetime, window: timedelta, basis: datetime
) -> None:
    """Update #1 of each incident, laid out as ``ScheduleStore`` keeps it."""
    for start in range(0, count, PIPELINE_ITEMS):
        async with redis.pipeline(transaction=False) as pipe:
            for n in range(start, min(count, start + PIPELINE_ITEMS)):
                incident_id = f"inc-{n:07}"
                item = ScheduleItem(
                    incident_id=incident_id,
                    sequence=1,
                    severity=Severity.CRITICAL,
                    basis_at=basis,
                    due_at=first_due + window * n / count,
                )
                pipe.hset(SCHEDULE_ITEMS, incident_id, item.model_dump_json())
                pipe.zadd(SCHEDULE_DUE, {incident_id: ceil_ms(item.due_at)})
            await pipe.execute()


async def _published(redis: Redis) -> list[UpdateDue]:
    updates: list[UpdateDue] = []
    start = "-"
    while True:
        page = cast(StreamEntries, await redis.xrange(UPDATES_DUE, min=start, count=READ_PAGE))
        updates.extend(UpdateDue.model_validate_json(decode_entry(fields)) for _, fields in page)
        if len(page) < READ_PAGE:
            return updates
        start = f"({page[-1][0].decode()}"


def _instances(
    count: int, redis_url: str, plan: Path, log_dir: Path, *, tick_ms: int, lease_ms: int
) -> list[ServiceProcess]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
    instances = []
    for n in range(count):
        port = free_port()
        env = {
            **base,
            "CLARION_REDIS_URL": redis_url,
            "CLARION_PLAN": str(plan),
            "CLARION_SCHEDULER_PORT": str(port),
            "CLARION_SCHEDULER_TICK_MS": str(tick_ms),
            "CLARION_SCHEDULER_LEASE_MS": str(lease_ms),
            "CLARION_LOG_LEVEL": "WARNING",
            "CLARION_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }
        directory = log_dir / f"scheduler-{count}-{n}"
        directory.mkdir()
        instances.append(
            ServiceProcess("scheduler", env, directory, f"http://127.0.0.1:{port}/readyz")
        )
    return instances


async def _run(
    env: BenchEnv, plan: Path, log_dir: Path, *, instances: int, args: Options
) -> dict[str, Any]:
    await env.reset()
    redis, redis_url = env.redis, env.redis_url
    processes = _instances(
        instances, redis_url, plan, log_dir, tick_ms=args.tick_ms, lease_ms=args.lease_ms
    )
    try:
        for process in processes:
            process.start()
        for process in processes:
            await asyncio.to_thread(process.wait_ready, 60.0)

        written = time.perf_counter()
        now = await _redis_now(redis)
        await _write_incidents(redis, args.items, now - timedelta(minutes=30))
        first_due = await _redis_now(redis) + timedelta(seconds=args.lead)
        window = timedelta(seconds=args.window)
        await _write_schedule(redis, args.items, first_due, window, now - timedelta(minutes=30))
        done_writing = await _redis_now(redis)
        write_seconds = time.perf_counter() - written
        if done_writing > first_due:
            print(f"  warning: writing ended {done_writing - first_due} after the first due time")

        # Every item fired once its due set holds nothing before the re-armed updates.
        horizon = ceil_ms(first_due + window) + args.lease_ms + 60_000
        deadline = time.monotonic() + args.lead + args.window + 600
        while await redis.zcount(SCHEDULE_DUE, "-inf", horizon) > 0:
            if time.monotonic() > deadline:
                raise SystemExit("items still pending 600 s after the window")
            for process in processes:
                if process.process is not None and process.process.poll() is not None:
                    raise SystemExit(f"a scheduler exited\n{process.log_tail()}")
            await asyncio.sleep(0.2)  # a benchmark polls; tests never sleep
    finally:
        for process in processes:
            process.stop()

    updates = await _published(redis)
    lateness = sorted((u.emitted_at - u.due_at) / timedelta(milliseconds=1) for u in updates)
    distinct = len({u.event_id for u in updates})
    emitted = sorted(u.emitted_at for u in updates)
    # The rate while firing: from the first fire to the 99th percentile one (a few late
    # re-fires after a lease would otherwise stretch the span).
    p99_emitted = emitted[round(0.99 * (len(emitted) - 1))]
    span = (p99_emitted - emitted[0]).total_seconds()
    return {
        "instances": instances,
        "items": args.items,
        "entries": len(updates),
        "distinct_event_ids": distinct,
        "double_fires": len(updates) - distinct,
        "early_fires": sum(ms < 0 for ms in lateness),
        "lateness_ms": _summary(lateness),
        "fired_after_waiting_a_lease": sum(ms >= args.lease_ms for ms in lateness),
        # The same, leaving out the fires that failed first and waited out a lease.
        "lateness_ms_first_try": _summary([ms for ms in lateness if ms < args.lease_ms]),
        "fire_failed_logged": sum(_logged(p, "schedule.fire_failed") for p in processes),
        "fires_per_second": round(0.99 * len(updates) / span, 1) if span > 0 else None,
        "due_per_second": round(args.items / args.window, 1) if args.window else None,
        "write_seconds": round(write_seconds, 1),
    }


def _summary(ordered: list[float]) -> dict[str, float | None]:
    if not ordered:
        return {"p50": None, "p99": None, "max": None}
    return {
        "p50": round(statistics.median(ordered), 1),
        "p99": round(_percentile(ordered, 0.99), 1),
        "max": round(ordered[-1], 1),
    }


def _logged(process: ServiceProcess, event: str) -> int:
    """How many ``event`` records the process logged (JSON lines)."""
    needle = f'"event": "{event}"'
    return sum(needle in line for line in process.log_path.read_text(errors="replace").splitlines())


def _table(runs: list[dict[str, Any]]) -> str:
    header = (
        f"{'instances':>9} {'items':>8} {'entries':>8} {'distinct':>8} {'double':>6} "
        f"{'p50 ms':>9} {'p99 ms':>9} {'max ms':>9} {'fired/s':>8} {'failed':>6} {'>lease':>6}"
    )
    lines = [header, "-" * len(header)]
    for run in runs:
        late = {k: v or 0.0 for k, v in run["lateness_ms"].items()}
        lines.append(
            f"{run['instances']:>9} {run['items']:>8} {run['entries']:>8} "
            f"{run['distinct_event_ids']:>8} {run['double_fires']:>6} {late['p50']:>9.1f} "
            f"{late['p99']:>9.1f} {late['max']:>9.1f} {run['fires_per_second'] or 0:>8.1f} "
            f"{run['fire_failed_logged']:>6} {run['fired_after_waiting_a_lease']:>6}"
        )
    return "\n".join(lines)


def _figures(runs: list[dict[str, Any]]) -> list[Figure]:
    figures = []
    for run in runs:
        late = run["lateness_ms"]
        size = f"{run['items']:,} items, {run['instances']} instance(s)"
        figures.append(
            Figure(
                NAME,
                f"lateness p50 / p99 / max, {size}",
                f"{ms(late['p50'])} / {ms(late['p99'])} / {ms(late['max'])}",
                target="p99 ≤ 1 s",
            )
        )
        figures.append(
            Figure(
                NAME,
                f"double fires, {size}",
                f"{run['double_fires']} of {run['entries']:,} fired "
                f"({run['fires_per_second'] or 0:,.0f} fired/s)",
                target="0",
            )
        )
    return figures


async def run(env: BenchEnv, options: Options) -> ScenarioResult:
    directory = env.directory(NAME)
    plan = write_plan(directory)  # SEV1: an update every 30 min
    print(
        f"scheduler: {options.items:,} update-due items due over {options.window:g} s, "
        f"tick {options.tick_ms} ms, lease {options.lease_ms} ms, {os.cpu_count()} CPUs",
        flush=True,
    )
    runs = []
    for count in options.instances:
        result = await _run(env, plan, directory, instances=count, args=options)
        runs.append(result)
        print(_table([result]).splitlines()[-1])
        first = result["lateness_ms_first_try"]
        print(
            f"{'':>9} fires that did not wait out a lease: p50 {first['p50']} ms, "
            f"p99 {first['p99']} ms, max {first['max']} ms",
            flush=True,
        )
    return ScenarioResult(NAME, _figures(runs), {"runs": runs}, asdict(options))


def main() -> None:
    defaults = Settings(_env_file=None)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=Options.items)
    parser.add_argument("--window", type=float, default=Options.window)
    parser.add_argument("--lead", type=float, default=Options.lead)
    parser.add_argument("--instances", type=int, nargs="+", default=list(Options.instances))
    parser.add_argument("--tick-ms", type=int, default=defaults.scheduler_tick_ms)
    parser.add_argument("--lease-ms", type=int, default=defaults.scheduler_lease_ms)
    args = parser.parse_args()
    options = Options(
        args.items, args.window, args.lead, tuple(args.instances), args.tick_ms, args.lease_ms
    )

    async def go() -> None:
        async with bench_environment() as env:
            result = await run(env, options)
        print()
        print(_table(result.data["runs"]))
        print(table(result.figures))

    asyncio.run(go())


if __name__ == "__main__":
    main()
