"""Fan-out: one SEV1 incident to 10,000 email and 1,000 SMS recipients.

Runs the three services as processes against an embedded Valkey, a local aiosmtpd
server and a local stand-in for Twilio, publishes one incident-opened event, and
prints how long until every delivery is recorded sent, the rate, and the
dispatcher's peak resident memory (VmHWM).

    .venv/bin/python -m bench.fanout [--emails 10000] [--sms 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from redis.asyncio import Redis

from shared.contracts import DeliveryStatus, IncidentOpened, Severity
from shared.embedded import start_embedded_valkey
from shared.redis_values import DATA_FIELD, data_entries
from shared.streams import DELIVERY_LOG, INCIDENT_EVENTS
from tests.support.builders import make_incident
from tests.support.fake_provider import FakeProvider
from tests.support.plans import write_plan
from tests.support.processes import System
from tests.support.smtp import SmtpServer


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _sent(redis: Redis) -> int:
    """Records in the delivery log with status sent (read in pages)."""
    count, start = 0, "-"
    while True:
        raw = await redis.xrange(DELIVERY_LOG, min=start, count=5000)
        entries = data_entries(raw)
        count += sum(f'"status":"{DeliveryStatus.SENT.value}"'.encode() in p for _, p in entries)
        if len(raw or ()) < 5000:
            return count
        start = f"({entries[-1][0]}"


async def run(emails: int, sms: int) -> None:
    with tempfile.TemporaryDirectory(prefix="clarion-bench-") as tmp, FakeProvider() as twilio:
        twilio.answer(
            "POST",
            "/2010-04-01/Accounts/ACbench/Messages.json",
            201,
            json={"sid": "SMbench", "status": "queued"},
        )
        valkey = start_embedded_valkey(Path(tmp) / "valkey")
        smtp = SmtpServer()
        smtp.start()
        addresses = [f"user{i}@example.com" for i in range(emails)]
        phones = [f"+1415555{i:04d}" for i in range(sms)]
        plan = write_plan(Path(tmp), addresses)
        if phones:
            numbers = "".join(f"    - '{p}'\n" for p in phones)
            text = plan.read_text().replace(
                "status_page: true", f"status_page: true\n    sms:\n{numbers}"
            )
            plan.write_text(text)
        system = System(
            env={
                "CLARION_REDIS_URL": str(valkey.connection_url),
                "CLARION_SMTP_HOST": smtp.host,
                "CLARION_SMTP_PORT": str(smtp.port),
                "CLARION_PLAN": str(plan),
                "CLARION_LOG_LEVEL": "WARNING",
                "CLARION_TWILIO_ACCOUNT_SID": "ACbench",
                "CLARION_TWILIO_AUTH_TOKEN": "bench-token",
                "CLARION_TWILIO_FROM": "+14155550000",
                "CLARION_TWILIO_API_URL": twilio.url,
                "CLARION_RATE_LIMITS": "sms=100000/second",
            },
            log_dir=Path(tmp),
        )
        redis = Redis.from_url(str(valkey.connection_url))
        try:
            system.start()
            now = datetime.now(UTC)
            incident = make_incident(id="inc-fanout", severity=Severity.CRITICAL, opened_at=now)
            event = IncidentOpened(
                event_id="ev-fanout",
                occurred_at=now,
                incident=incident,
                next_update_at=now + timedelta(minutes=30),
            )
            expected = emails + sms + 1  # and the status page
            started = time.perf_counter()
            await redis.xadd(INCIDENT_EVENTS, {DATA_FIELD: event.model_dump_json()})
            while (sent := await _sent(redis)) < expected:
                if time.perf_counter() - started > 900:
                    raise SystemExit(f"only {sent} of {expected} sent after 900 s")
                await asyncio.sleep(0.5)  # a benchmark polls; tests never sleep
            elapsed = time.perf_counter() - started
            process = system["dispatcher"].process
            assert process is not None
            print(f"fan-out of {emails} emails + {sms} SMS + 1 status page post")
            print(f"  all {expected} sent in {elapsed:.1f} s: {expected / elapsed:,.0f} messages/s")
            received = len(smtp.mailbox.messages), len(twilio.received)
            print(f"  SMTP sink received {received[0]}, Twilio stand-in {received[1]}")
            print(f"  dispatcher peak RSS: {_peak_rss_mb(process.pid):.0f} MB")
        finally:
            await redis.aclose()
            system.stop()
            smtp.stop()
            valkey.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=10_000)
    parser.add_argument("--sms", type=int, default=1_000)
    args = parser.parse_args()
    asyncio.run(run(args.emails, args.sms))


if __name__ == "__main__":
    main()
