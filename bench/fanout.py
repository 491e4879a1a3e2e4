"""Scenario 3, fan-out: one SEV1 incident to 10,000 email and 1,000 SMS recipients.

Runs the three services as processes on the benchmark's Redis, with the sinks'
SMTP server and its HTTP sink standing in for Twilio, publishes one incident-opened
event, and reports how long until every delivery is recorded sent, the rate, the
emails' own rate (from the event to the last email's arrival at the SMTP sink; the
SMS are sent meanwhile, on the same CPU), and the dispatcher's memory: peak resident
memory (VmHWM) per process, and with workers the peak proportional memory (PSS) of
all its processes together (shared pages counted once).

    .venv/bin/python -m bench.fanout [--emails 10000] [--sms 1000]

Run on its own it only prints; ``make bench`` (``python -m bench.run_all``) runs it
among the other scenarios and writes ``bench/results/fanout.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from redis.asyncio import Redis

from bench.environment import BenchEnv, bench_environment, pid_of
from bench.procstats import CpuMeter, family_peak_rss_mb, family_pss_mb, redis_pid
from bench.report import Figure, ScenarioResult, table
from shared.contracts import DeliveryStatus, IncidentOpened, Severity
from shared.redis_values import DATA_FIELD, data_entries
from shared.streams import DELIVERY_LOG, INCIDENT_EVENTS
from tests.support.builders import make_incident
from tests.support.plans import write_plan

NAME = "fanout"
TWILIO_PATH = "/2010-04-01/Accounts/ACbench/Messages.json"


@dataclass(frozen=True)
class Options:
    emails: int = 10_000
    sms: int = 1_000
    timeout: float = 900.0


QUICK = Options(emails=300, sms=30, timeout=120.0)


class SentCounter:
    """Counts ``sent`` records in the delivery log, reading only what is new each time."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._last = "-"
        self.sent = 0

    async def count(self) -> int:
        needle = f'"status":"{DeliveryStatus.SENT.value}"'.encode()
        while True:
            raw = await self._redis.xrange(DELIVERY_LOG, min=self._last, count=5000)
            entries = data_entries(raw)
            for entry_id, payload in entries:
                data = payload.encode() if isinstance(payload, str) else payload
                self.sent += needle in data
                self._last = f"({entry_id}"
            if len(raw or ()) < 5000:
                return self.sent


def _plan(directory: Path, emails: int, sms: int) -> Path:
    addresses = [f"user{i}@example.com" for i in range(emails)]
    customers: dict[str, object] = {"public": True, "status_page": True, "email": addresses}
    if sms:
        customers["sms"] = [f"+1415555{i:04d}" for i in range(sms)]
    return write_plan(directory, addresses, audiences={"customers": customers})


async def run(env: BenchEnv, options: Options) -> ScenarioResult:
    await env.reset()
    directory = env.directory(NAME)
    system = env.system(
        _plan(directory, options.emails, options.sms),
        directory,
        CLARION_TWILIO_ACCOUNT_SID="ACbench",
        CLARION_TWILIO_AUTH_TOKEN="bench-token",  # a local stand-in's
        CLARION_TWILIO_FROM="+14155550000",
        CLARION_TWILIO_API_URL=env.sinks.http_url,
        CLARION_RATE_LIMITS="sms=100000/second",
    )
    before = await env.sinks.counts()
    try:
        env.start(system)
        print(
            f"fan-out: {options.emails:,} emails + {options.sms:,} SMS + the status page",
            flush=True,
        )
        now = datetime.now(UTC)
        incident = make_incident(id="inc-fanout", severity=Severity.CRITICAL, opened_at=now)
        event = IncidentOpened(
            event_id="ev-fanout",
            occurred_at=now,
            incident=incident,
            next_update_at=now + timedelta(minutes=30),
        )
        expected = options.emails + options.sms + 1  # and the status page
        counter = SentCounter(env.redis)
        meter = CpuMeter(
            {
                "dispatcher": pid_of(system["dispatcher"]),
                "sinks": env.sinks.pid,
                "valkey": await redis_pid(env.redis),
            }
        )
        meter.start()
        started, opened = time.perf_counter(), time.monotonic()  # the sinks stamp monotonic
        await env.redis.xadd(INCIDENT_EVENTS, {DATA_FIELD: event.model_dump_json()})
        dispatcher_pid = pid_of(system["dispatcher"])
        pss_peak = 0.0
        while (sent := await counter.count()) < expected:
            pss_peak = max(pss_peak, family_pss_mb(dispatcher_pid) or 0.0)
            if time.perf_counter() - started > options.timeout:
                break
            await asyncio.sleep(0.2)  # a benchmark polls; tests never sleep
        elapsed = time.perf_counter() - started
        cpu = {name: round(seconds / elapsed, 2) for name, seconds in meter.stop().items()}
        pss_peak = max(pss_peak, family_pss_mb(dispatcher_pid) or 0.0)
        peaks = family_peak_rss_mb(dispatcher_pid)
    finally:
        env.stop(system)
    after = await env.sinks.counts()
    _, emails = await env.sinks.arrivals("smtp", before["smtp"])
    last_email = max((float(arrived) for arrived, _, _ in emails), default=None)
    email_seconds = None if last_email is None else last_email - opened
    data = {
        "expected": expected,
        "sent": sent,
        "seconds": round(elapsed, 2),
        "messages_per_second": round(sent / elapsed, 1),
        "emails_per_second": round(len(emails) / email_seconds, 1) if email_seconds else None,
        "emails_received": after["smtp"] - before["smtp"],
        "sms_received": after["http"].get(TWILIO_PATH, 0) - before["http"].get(TWILIO_PATH, 0),
        "dispatcher_peak_rss_mb": max(peaks.values(), default=None),
        "dispatcher_peak_rss_mb_by_process": list(peaks.values()),
        "dispatcher_processes": len(peaks),
        "dispatcher_peak_pss_mb_in_all": pss_peak or None,
        "cpu_share": cpu,  # CPU seconds per second (cores) while it ran
    }
    peak = data["dispatcher_peak_rss_mb"]
    total = round(sum(peaks.values()), 1)
    print(
        f"  {sent:,} of {expected:,} sent in {elapsed:.1f} s: "
        f"{data['messages_per_second']:,.0f} messages/s, emails "
        f"{data['emails_per_second'] or 0:,.0f}/s; SMTP sink got "
        f"{data['emails_received']:,}, SMS stand-in {data['sms_received']:,}; "
        f"dispatcher peak RSS {peak} MB per process ({len(peaks)} processes, {total} MB in all; "
        f"PSS in all {data['dispatcher_peak_pss_mb_in_all']} MB); "
        f"CPU {', '.join(f'{name} {share:.0%}' for name, share in cpu.items())}",
        flush=True,
    )
    size = f"{options.emails:,} emails + {options.sms:,} SMS"
    late = "" if sent >= expected else f" [{sent:,} of {expected:,} in {options.timeout:g} s]"
    figures = [
        Figure(
            NAME,
            f"messages/s, {size}",
            f"{data['messages_per_second']:,.0f}/s{late}",
        ),
        Figure(
            NAME,
            f"emails/s: the {options.emails:,} emails, to the last one's arrival",
            f"{data['emails_per_second'] or 0:,.0f}/s",
            target="≥ 2,000 emails/s",
        ),
        Figure(NAME, f"total time, {size}", f"{elapsed:,.1f} s"),
        Figure(
            NAME,
            "dispatcher peak RSS",
            f"{peak} MB"
            if len(peaks) < 2
            else f"{peak} MB per process; in all {total} MB RSS, {pss_peak or '?'} MB PSS",
            target="≤ 200 MB",
        ),
    ]
    return ScenarioResult(NAME, figures, data, asdict(options))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=Options.emails)
    parser.add_argument("--sms", type=int, default=Options.sms)
    args = parser.parse_args()

    async def go() -> None:
        async with bench_environment() as env:
            result = await run(env, Options(args.emails, args.sms))
        print(table(result.figures))

    asyncio.run(go())


if __name__ == "__main__":
    main()
