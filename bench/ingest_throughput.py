"""Scenario 1, ingest throughput: alerts per second accepted with a 2xx, beside Alertmanager.

Closed loop (:func:`bench.http_load.closed_loop`): ``c`` keep-alive connections each
send their next request as soon as the last is answered, for a fixed time. Every
request carries new alerts (a new group: Clarion opens an incident for it, durably,
before its 202). Three targets at each concurrency, one after another:

- ``sink``: the trivial HTTP sink, same bodies: the client's own ceiling on this
  machine (with the client's CPU use, a saturated client shows);
- ``clarion``: the ingest service alone (``POST /v1/alerts/alertmanager``), on the
  benchmark's Redis, with the run's worker processes (``--workers``, one per core by
  default); the dispatcher and scheduler are not running, so nothing else competes
  for the CPU (the events wait in their stream);
- ``clarion 1 process``: the same with one process (``CLARION_INGEST_WORKERS=1``),
  when the run uses more;
- ``alertmanager``: ``POST /api/v2/alerts`` with the same alerts as postable alerts.

Then the same alert again (``dedup``): a resend Clarion answers without writing.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import alertmanager as am
from bench.bodies import (
    ALERTMANAGER_PATH,
    CLARION_PATH,
    Template,
    alertmanager_body,
    clarion_body,
    requests,
)
from bench.environment import BenchEnv, pid_of
from bench.http_load import LoadResult, closed_loop
from bench.procstats import CpuMeter, redis_pid
from bench.report import Figure, ScenarioResult, ms, ratio, summary_ms
from tests.support.plans import write_plan

NAME = "ingest"
SINGLE = "clarion 1 process"
CLIENT_BOUND = 0.85  # the client's CPU share of one core above which it may be the limit


@dataclass(frozen=True)
class Options:
    concurrency: tuple[int, ...] = (1, 8, 32, 128)
    duration: float = 10.0  # seconds per run
    warmup: float = 2.0
    shapes: tuple[int, ...] = (1, 10)  # alerts per request
    dedup_ids: int = 2000


QUICK = Options(concurrency=(1, 32), duration=1.0, warmup=0.5, dedup_ids=300)


@dataclass(frozen=True)
class Target:
    name: str
    host: str
    port: int
    path: str
    body: Callable[[int], Template]  # alerts per request -> the body
    pids: dict[str, int | None]


_runs = itertools.count(1)


def _ids() -> Callable[[int], str]:
    tag = f"r{next(_runs)}-"
    return lambda n: f"{tag}{n}"


def _cycling(ident: Callable[[int], str], count: int) -> Callable[[int], str]:
    return lambda n: ident(n % count)


async def _measure(
    target: Target,
    template: Template,
    concurrency: int,
    duration: float,
    *,
    ident: Callable[[int], str] | None = None,
    limit: int | None = None,
) -> tuple[LoadResult, dict[str, float]]:
    meter = CpuMeter(target.pids)
    make = requests(target.host, target.port, target.path, template, ident or _ids())
    meter.start()
    result = await closed_loop(
        target.host, target.port, make, concurrency=concurrency, duration=duration, limit=limit
    )
    used = meter.stop()
    return result, {name: round(s / result.elapsed, 3) for name, s in used.items()}


def _row(
    target: str, alerts: int, result: LoadResult, server_cpu: dict[str, float]
) -> dict[str, Any]:
    return {
        "target": target,
        "alerts_per_request": alerts,
        "concurrency": result.concurrency,
        "seconds": round(result.elapsed, 2),
        "requests": sum(result.statuses.values()),
        "accepted": result.ok,
        "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
        "connection_errors": result.errors,
        "requests_per_second": round(result.ok / result.elapsed, 1),
        "alerts_per_second": round(result.ok * alerts / result.elapsed, 1),
        "latency_ms": summary_ms(result.latencies),
        "client_cpu_share": round(result.client_cpu_share, 3),
        "server_cpu_share": server_cpu,
    }


def _rate(row: dict[str, Any] | None) -> float | None:
    return None if row is None else float(row["alerts_per_second"])


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    text = f"{row['alerts_per_second']:,.0f}/s (p99 {ms(row['latency_ms']['p99'])})"
    refused = row["requests"] - row["accepted"]
    if refused:
        text += f" [{refused} not 2xx]"
    if row["client_cpu_share"] >= CLIENT_BOUND:
        text += f" [client {row['client_cpu_share']:.0%} CPU]"
    return text


def _print(row: dict[str, Any]) -> None:
    late = row["latency_ms"]
    cpu = " ".join(f"{k} {v:.0%}" for k, v in row["server_cpu_share"].items())
    print(
        f"  {row['target']:<18} {row['alerts_per_request']:>2} alerts/req"
        f"  c={row['concurrency']:<4}"
        f" {row['requests_per_second']:>9,.0f} req/s {row['alerts_per_second']:>9,.0f} alerts/s"
        f"  p50 {late['p50'] or 0:7.2f} ms  p99 {late['p99'] or 0:7.2f} ms"
        f"  client CPU {row['client_cpu_share']:.0%}  {cpu}",
        flush=True,
    )


def _best(rows: list[dict[str, Any]], target: str, alerts: int, by: str) -> dict[str, Any] | None:
    """The run of ``target`` with ``alerts``-alert requests that has the most ``by``."""
    runs = [r for r in rows if r["target"] == target and r["alerts_per_request"] == alerts]
    return max(runs, key=lambda r: float(r[by])) if runs else None


def _figures(rows: list[dict[str, Any]], options: Options) -> list[Figure]:
    def find(target: str, alerts: int, c: int) -> dict[str, Any] | None:
        return next(
            (
                r
                for r in rows
                if (r["target"], r["alerts_per_request"], r["concurrency"]) == (target, alerts, c)
            ),
            None,
        )

    figures = []
    for alerts in options.shapes:
        target = "≥ AM" if alerts > 1 else "≥ 0.5 x AM"
        for c in options.concurrency:
            clarion, manager = find("clarion", alerts, c), find("alertmanager", alerts, c)
            figures.append(
                Figure(
                    NAME,
                    f"alerts/s, {alerts}-alert requests, {c} connections",
                    _cell(clarion),
                    _cell(manager),
                    ratio(_rate(clarion), _rate(manager)),
                    target,
                )
            )
        if single := _best(rows, SINGLE, alerts, "alerts_per_second"):
            measure = f"one ingest process, {alerts}-alert requests, best of the sweep"
            text = f"{_cell(single)} at {single['concurrency']} connections"
            figures.append(Figure(NAME, measure, text))
        if ceiling := _best(rows, "sink", alerts, "requests_per_second"):
            measure = f"client ceiling (trivial sink), {alerts}-alert requests"
            text = (
                f"{ceiling['requests_per_second']:,.0f} req/s at {ceiling['concurrency']} "
                f"connections, client CPU {ceiling['client_cpu_share']:.0%}"
            )
            figures.append(Figure(NAME, measure, text))
    dedup = [r for r in rows if r["target"].endswith("dedup")]
    if dedup:
        clarion = next((r for r in dedup if r["target"].startswith("clarion")), None)
        manager = next((r for r in dedup if r["target"].startswith("alertmanager")), None)
        figures.append(
            Figure(
                NAME,
                f"resends (same alert again), 1-alert, {dedup[0]['concurrency']} connections",
                _cell(clarion),
                _cell(manager),
                ratio(_rate(clarion), _rate(manager)),
            )
        )
    return figures


async def run(env: BenchEnv, binary: Path | None, options: Options) -> ScenarioResult:
    await env.reset()
    directory = env.directory(NAME)
    plan = write_plan(directory)
    system = env.system(plan, directory)
    single = env.system(plan, directory, CLARION_INGEST_WORKERS="1") if env.workers > 1 else None
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        env.start(system, ["ingest"])
        stack.callback(env.stop, system)
        if single is not None:
            env.start(single, ["ingest"])
            stack.callback(env.stop, single)
        targets = [
            Target(
                "sink",
                env.sinks.host,
                env.sinks.http_port,
                "/calibrate",
                clarion_body,
                {"sinks": env.sinks.pid},
            ),
            Target(
                "clarion",
                "127.0.0.1",
                system.ingest_port,
                CLARION_PATH,
                clarion_body,
                {"ingest": pid_of(system["ingest"]), "valkey": await redis_pid(env.redis)},
            ),
        ]
        if single is not None:
            targets.append(
                Target(
                    SINGLE,
                    "127.0.0.1",
                    single.ingest_port,
                    CLARION_PATH,
                    clarion_body,
                    {"ingest": pid_of(single["ingest"]), "valkey": await redis_pid(env.redis)},
                )
            )
        if binary is not None:
            manager = stack.enter_context(am.running(binary, directory / "am", env.sinks.http_url))
            targets.append(
                Target(
                    "alertmanager",
                    manager.host,
                    manager.port,
                    ALERTMANAGER_PATH,
                    alertmanager_body,
                    {"alertmanager": manager.pid},
                )
            )
        print(
            f"ingest throughput: {options.duration:g} s per run, connections "
            f"{', '.join(map(str, options.concurrency))}",
            flush=True,
        )
        for target in targets:  # warm up: first requests pay for imports, caches, connections
            await _measure(target, target.body(1), 8, options.warmup)
        for alerts in options.shapes:
            for c in options.concurrency:
                for target in targets:
                    result, cpu = await _measure(target, target.body(alerts), c, options.duration)
                    rows.append(_row(target.name, alerts, result, cpu))
                    _print(rows[-1])
        c = 32 if 32 in options.concurrency else options.concurrency[-1]
        for target in (t for t in targets[1:] if t.name != SINGLE):
            template = target.body(1)
            ident = _ids()
            await _measure(target, template, c, 600, ident=ident, limit=options.dedup_ids)
            again = _cycling(ident, options.dedup_ids)  # the same alerts, sent again
            result, cpu = await _measure(target, template, c, options.duration, ident=again)
            rows.append(_row(f"{target.name} dedup", 1, result, cpu))
            _print(rows[-1])
    return ScenarioResult(NAME, _figures(rows, options), {"runs": rows}, asdict(options))
