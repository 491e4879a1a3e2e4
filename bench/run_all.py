"""Clarion's benchmarks in one command (``make bench``), side by side with Alertmanager.

    .venv/bin/python -m bench.run_all [--quick] [--only SCENARIO ...] [--soak]
        [--profile SERVICE ...]

Starts Redis (an embedded Valkey, or ``CLARION_REDIS_URL``), the local sinks (SMTP
and HTTP, :mod:`bench.sink_server`) and, for the comparisons, Debian's Prometheus
Alertmanager (installed with apt-get when missing), then runs each scenario:

1. ``ingest``: alerts per second accepted with a 2xx, 1- and 10-alert requests,
   across a concurrency sweep, with request latency; the same against Alertmanager.
2. ``first_message``: webhook POST to the first email, signed webhook and status
   page update, at 10, 50 and 200 new incidents per second; Alertmanager alongside.
3. ``fanout``: one SEV1 incident to 10,000 emails and 1,000 SMS.
4. ``scheduler``: 100,000 update-due items, 1 and 3 scheduler instances.
5. ``soak`` (only with ``--soak``): ten minutes of mixed load, memory and streams.

It prints one table and writes ``bench/results/<scenario>.json`` and
``bench/results/latest.json`` (machine facts and every figure). ``--quick`` runs
small sizes (a smoke run of about a minute and a half) and writes to
``.clarion/bench-quick/`` instead, so it never overwrites the recorded results.
``--profile ingest`` (or
``dispatcher``, ``scheduler``) runs that service under cProfile (main-thread CPU
time) and writes each profile and its hottest functions to ``.clarion/bench-profiles/``.
Nothing asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import alertmanager as am
from bench import fanout, first_message, ingest_throughput, scheduler, soak
from bench.environment import BenchEnv, bench_environment
from bench.report import (
    RESULTS,
    Figure,
    ScenarioResult,
    machine,
    markdown,
    recorded_figures,
    table,
    write,
)

SCENARIOS = ("ingest", "first_message", "fanout", "scheduler", "soak")
SERVICES = ("ingest", "dispatcher", "scheduler")
SCRATCH = Path(__file__).parents[1] / ".clarion"  # git ignores it
PROFILES = SCRATCH / "bench-profiles"
QUICK_RESULTS = SCRATCH / "bench-quick"


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run_all", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, help="run only these")
    parser.add_argument("--soak", action="store_true", help="also run the 10-minute soak")
    parser.add_argument(
        "--profile", nargs="+", choices=SERVICES, default=[], help="run under cProfile"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes per ingest and per dispatcher (default: one per core)",
    )
    return parser.parse_args(argv)


def _chosen(args: argparse.Namespace) -> list[str]:
    if args.only:
        return [s for s in SCENARIOS if s in args.only]
    return [s for s in SCENARIOS if s != "soak" or args.soak]


async def _run(name: str, quick: bool, env: BenchEnv, binary: Path | None) -> ScenarioResult:
    if name == "ingest":
        options = ingest_throughput.QUICK if quick else ingest_throughput.Options()
        return await ingest_throughput.run(env, binary, options)
    if name == "first_message":
        latency = first_message.QUICK if quick else first_message.Options()
        return await first_message.run(env, binary, latency)
    if name == "fanout":
        return await fanout.run(env, fanout.QUICK if quick else fanout.Options())
    if name == "scheduler":
        return await scheduler.run(env, scheduler.QUICK if quick else scheduler.Options())
    return await soak.run(env, soak.QUICK if quick else soak.Options())


def _order(figure: Figure) -> int:
    return SCENARIOS.index(figure.scenario) if figure.scenario in SCENARIOS else len(SCENARIOS)


def _write_profiles(paths: Sequence[Path], directory: Path = PROFILES) -> None:
    """Each profile (``.prof``, for pstats or snakeviz) and its hottest functions (``.txt``)."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in paths:
        out = directory / f"{path.parent.name}-{path.stem}.txt"
        shutil.copyfile(path, out.with_suffix(".prof"))
        with out.open("w") as stream:
            stats = pstats.Stats(str(path), stream=stream).strip_dirs()
            stats.sort_stats("tottime").print_stats(40)
            stats.sort_stats("cumulative").print_stats(60)
        print(f"profile: {out}")


async def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    chosen = _chosen(args)
    command = "python -m bench.run_all " + " ".join(sys.argv[1:] if argv is None else argv)
    directory = QUICK_RESULTS if args.quick else RESULTS
    facts = machine()
    workers = 1 if args.profile else args.workers  # a profile follows one process
    print(
        f"Clarion benchmarks ({'quick' if args.quick else 'full'}): {', '.join(chosen)}\n"
        f"machine: {facts['cores']} cores, {facts['cpu_model']}, Python {facts['python']}, "
        f"load average {facts['load_average']}, Python speed {facts['python_speed']} "
        f"M loops/s; ingest and dispatcher: {workers} "
        "process(es) each",
        flush=True,
    )
    binary = am.find_or_install() if {"ingest", "first_message"} & set(chosen) else None
    results: list[ScenarioResult] = []
    async with bench_environment(args.profile, workers) as env:
        for name in chosen:
            print(f"\n== {name} ==", flush=True)
            results.append(await _run(name, args.quick, env, binary))
            results[-1].options["workers"] = workers
            write(results[-1:], command.strip(), directory)
        if env.profiles:
            _write_profiles(env.profiles)
    figures = [f for r in results for f in r.figures]
    print("\n" + table(figures))
    print(f"\nwritten to {directory / 'latest.json'}")
    recorded = recorded_figures(directory)  # this run's, and the last of the others
    (directory / "latest.md").write_text(
        f"Machine: {facts['cores']} cores ({facts['cpu_model']}), Python {facts['python']}, "
        f"{facts['date'][:10]}, Python speed {facts['python_speed']} M loops/s "
        f"(`bench.report.python_speed`); ingest and dispatcher {workers} process(es) each. "
        f"Command: `{command.strip()}`.\n\n" + markdown(sorted(recorded, key=_order)) + "\n"
    )
    if binary is None and {"ingest", "first_message"} & set(chosen):
        print("\n!!! Alertmanager was not available: its columns are empty.")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
