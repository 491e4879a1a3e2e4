"""Time from an Alertmanager webhook to the first email, through all three services.

Runs the real processes against an embedded Valkey and a local aiosmtpd server,
posts N alert groups one after another, and prints the ingest answer time and the
webhook-to-email latency (p50 / p95 / max), plus end-to-end throughput of a burst.

    .venv/bin/python -m bench.webhook_to_email [--incidents 50] [--burst 200]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx

from shared.embedded import start_embedded_valkey
from tests.support.plans import write_plan
from tests.support.processes import System
from tests.support.smtp import SmtpServer

FIXTURE = Path(__file__).parents[1] / "tests" / "fixtures" / "alertmanager_webhook_v4_firing.json"


def _payload(template: dict[str, Any], n: int) -> bytes:
    body = copy.deepcopy(template)
    body["groupKey"] = f'{{}}:{{alertname="Bench{n}"}}'
    for alert in body["alerts"]:
        alert["labels"]["alertname"] = f"Bench{n}"
        alert["fingerprint"] = f"{alert['fingerprint']}{n}"
    return json.dumps(body).encode()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _more_than(count: int) -> Callable[[list[EmailMessage]], bool]:
    return lambda messages: len(messages) > count


def _report(name: str, values_ms: list[float]) -> None:
    print(
        f"{name:<28} n={len(values_ms):<5} p50={statistics.median(values_ms):7.1f} ms  "
        f"p95={_percentile(values_ms, 0.95):7.1f} ms  max={max(values_ms):7.1f} ms"
    )


async def _sequential(system: System, smtp: SmtpServer, template: dict[str, Any], n: int) -> None:
    answer_ms: list[float] = []
    email_ms: list[float] = []
    async with httpx.AsyncClient(timeout=30) as client:
        for i in range(n):
            seen = len(smtp.mailbox.messages)
            started = time.perf_counter()
            response = await client.post(
                f"{system.ingest_url}/v1/alerts/alertmanager",
                content=_payload(template, i),
                headers={"Content-Type": "application/json"},
            )
            answer_ms.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
            await asyncio.to_thread(smtp.mailbox.wait_for, _more_than(seen), 30.0)
            email_ms.append((time.perf_counter() - started) * 1000)
    _report("ingest 202 answer", answer_ms)
    _report("webhook -> first email", email_ms)


async def _burst(system: System, smtp: SmtpServer, template: dict[str, Any], n: int) -> None:
    seen = len(smtp.mailbox.messages)
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=60) as client:
        semaphore = asyncio.Semaphore(16)

        async def post(i: int) -> None:
            async with semaphore:
                r = await client.post(
                    f"{system.ingest_url}/v1/alerts/alertmanager",
                    content=_payload(template, 100_000 + i),
                    headers={"Content-Type": "application/json"},
                )
                r.raise_for_status()

        await asyncio.gather(*(post(i) for i in range(n)))
    accepted = time.perf_counter() - started
    await asyncio.to_thread(smtp.mailbox.wait_for, _more_than(seen + n - 1), 300.0)
    delivered = time.perf_counter() - started
    print(f"burst of {n} webhooks: accepted at {n / accepted:7.1f}/s, ", end="")
    print(f"all {n} emails delivered at {n / delivered:7.1f}/s ({delivered:.1f} s)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--incidents", type=int, default=50)
    parser.add_argument("--burst", type=int, default=200)
    args = parser.parse_args()
    template = json.loads(FIXTURE.read_text())
    with tempfile.TemporaryDirectory(prefix="clarion-bench-") as tmp:
        valkey = start_embedded_valkey(Path(tmp) / "valkey")
        smtp = SmtpServer()
        smtp.start()
        system = System(
            env={
                "CLARION_REDIS_URL": str(valkey.connection_url),
                "CLARION_SMTP_HOST": smtp.host,
                "CLARION_SMTP_PORT": str(smtp.port),
                "CLARION_PLAN": str(write_plan(Path(tmp), ["bench@example.com"])),
                "CLARION_LOG_LEVEL": "WARNING",
            },
            log_dir=Path(tmp),
        )
        try:
            system.start()
            print("Clarion benchmark: 3 services as processes, embedded Valkey, local SMTP")
            await _sequential(system, smtp, template, args.incidents)
            await _burst(system, smtp, template, args.burst)
        finally:
            system.stop()
            smtp.stop()
            valkey.stop()


if __name__ == "__main__":
    asyncio.run(main())
