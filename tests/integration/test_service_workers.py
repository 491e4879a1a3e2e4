"""Ingest and the dispatcher as several worker processes on one port.

``CLARION_INGEST_WORKERS`` / ``CLARION_DISPATCHER_WORKERS`` above 1: the service's
process binds the port and supervises that many workers (``shared.serving``). The
tests run the real services and find the workers in ``/proc`` (Linux); which worker
served what is read from the metric files each worker writes
(``PROMETHEUS_MULTIPROC_DIR``, in the workers' environment).
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, cast

import httpx
import pytest
from faststream.redis import RedisBroker
from prometheus_client import CollectorRegistry, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from redis.asyncio import Redis

from shared.contracts import Severity
from shared.incidents import load_incident
from shared.serving import worker_settings
from shared.streams import DISPATCHER_GROUP, INCIDENT_EVENTS, delivery_stream
from shared.worker_metrics import MULTIPROCESS_DIR, exposed_registry
from tests.support.alert_bodies import alertmanager_body
from tests.support.builders import make_incident, make_incident_opened
from tests.support.plans import write_plan
from tests.support.processes import ServiceProcess, free_port, process_environ, worker_pids
from tests.support.smtp import SmtpServer
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

WORKERS: Final = 2
BATCH: Final = 40
"""Webhooks posted at once, each on a connection of its own."""
ACCEPTED: Final = "clarion_ingest_alerts_accepted"


def _service(name: str, tmp_path: Path, **env: str) -> tuple[ServiceProcess, str]:
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
    base.pop(MULTIPROCESS_DIR, None)
    environment = {
        **base,
        f"CLARION_{name.upper()}_PORT": str(port),
        f"CLARION_{name.upper()}_WORKERS": str(WORKERS),
        "CLARION_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    url = f"http://127.0.0.1:{port}"
    return ServiceProcess(name, environment, tmp_path, f"{url}/readyz"), url


@pytest.fixture
def ingest(redis_url: str, tmp_path: Path) -> Iterator[tuple[ServiceProcess, str]]:
    service, url = _service(
        "ingest",
        tmp_path,
        CLARION_REDIS_URL=redis_url,
        CLARION_INGEST_RATE_LIMIT="100000/second",
        CLARION_POLLING_INTERVAL_MS="100",
    )
    service.start()
    try:
        service.wait_ready()
        yield service, url
    finally:
        service.stop()


def _pid(service: ServiceProcess) -> int:
    assert service.process is not None
    return service.process.pid


async def _workers(service: ServiceProcess, count: int = WORKERS) -> set[int]:
    """The service's workers, once there are ``count`` of them and each has started."""

    async def probe() -> set[int] | None:
        found = worker_pids(_pid(service))
        return found if len(found) == count and found <= _started(service) else None

    return await eventually(probe, within=30, what=f"{count} workers of {service.name}")


def _log(service: ServiceProcess) -> list[dict[str, Any]]:
    lines = service.log_path.read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def _started(service: ServiceProcess) -> set[int]:
    """The workers that said their app has started (each log line names its worker)."""
    return {
        int(line["worker_pid"])
        for line in _log(service)
        if line.get("event") == "Application startup complete." and "worker_pid" in line
    }


def _metrics_dir(workers: set[int]) -> Path:
    directories = {process_environ(pid).get(MULTIPROCESS_DIR) for pid in workers}
    assert len(directories) == 1, directories
    directory = directories.pop()
    assert directory, "the workers were started without a metrics directory"
    return Path(directory)


def _accepted_by(metrics_dir: Path, pid: int) -> float:
    """Alerts the worker ``pid`` accepted, from the counter file it wrote."""
    counters = metrics_dir / f"counter_{pid}.db"
    if not counters.exists():
        return 0.0
    merged = MultiProcessCollector.merge([str(counters)])  # type: ignore[no-untyped-call]
    return sum(
        float(sample.value)
        for metric in cast(list[Metric], merged)
        if metric.name == ACCEPTED
        for sample in metric.samples
        if sample.name == f"{ACCEPTED}_total"
    )


def _body(n: int) -> dict[str, Any]:
    """An Alertmanager group of its own (one incident per body)."""
    body = copy.deepcopy(alertmanager_body(n))
    body["groupKey"] = f'{{}}:{{alertname="Workers{n}"}}'
    body["groupLabels"] = {"alertname": f"Workers{n}"}
    return body


async def _post_batch(client: httpx.AsyncClient, url: str, first: int) -> list[str]:
    """Post BATCH webhooks at once; the incident of each (all must be accepted)."""
    responses = await asyncio.gather(
        *(
            client.post(f"{url}/v1/alerts/alertmanager", json=_body(n))
            for n in range(first, first + BATCH)
        )
    )
    assert [r.status_code for r in responses] == [202] * BATCH, [r.text for r in responses]
    return [str(r.json()["incident_id"]) for r in responses]


async def _metrics_total(client: httpx.AsyncClient, url: str) -> float:
    text = (await client.get(f"{url}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(f"{ACCEPTED}_total{{")
    )


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=BATCH))


async def test_ingest_workers_share_the_port_count_together_and_stop_on_sigterm(
    redis: Redis, ingest: tuple[ServiceProcess, str]
) -> None:
    service, url = ingest
    workers = await _workers(service)
    metrics_dir = _metrics_dir(workers)
    incidents: list[str] = []
    async with _client() as client:

        async def every_worker_served() -> bool:
            incidents.extend(await _post_batch(client, url, len(incidents)))
            return all(_accepted_by(metrics_dir, pid) > 0 for pid in workers)

        await eventually(every_worker_served, within=30, what="both workers accepting webhooks")
        per_worker = {pid: _accepted_by(metrics_dir, pid) for pid in workers}
        assert sum(per_worker.values()) == len(incidents), per_worker
        assert await _metrics_total(client, url) == len(incidents)

    assert len(set(incidents)) == len(incidents)  # one incident per group
    for incident_id in incidents:
        assert await load_incident(redis, incident_id) is not None, incident_id

    service.stop()
    assert service.process is not None
    assert service.process.returncode == 0, service.log_tail()
    assert not any(_alive(workers))
    assert not metrics_dir.exists()


async def test_a_killed_ingest_worker_is_replaced_and_its_counts_stay(
    ingest: tuple[ServiceProcess, str],
) -> None:
    service, url = ingest
    workers = await _workers(service)
    metrics_dir = _metrics_dir(workers)
    async with _client() as client:
        posted = len(await _post_batch(client, url, 0))
        victim = max(workers, key=lambda pid: _accepted_by(metrics_dir, pid))
        assert _accepted_by(metrics_dir, victim) > 0
        os.kill(victim, signal.SIGKILL)

        async def replaced() -> set[int] | None:
            found = worker_pids(_pid(service))
            return found if len(found) == WORKERS and victim not in found else None

        survivors = await eventually(replaced, within=30, what="a new worker")
        (newcomer,) = survivors - workers

    # A new client: connections the killed worker held are gone with it.
    async with _client() as client:
        sent = posted

        async def newcomer_served() -> bool:
            nonlocal posted, sent
            answers = await asyncio.gather(
                *(
                    client.post(f"{url}/v1/alerts/alertmanager", json=_body(n))
                    for n in range(sent, sent + BATCH)
                ),
                return_exceptions=True,
            )
            sent += BATCH
            # A connection cut while the workers change hands (seen about once in five
            # runs on a loaded 2-core machine) leaves its alert's fate unknown to us: the
            # counts below come from the workers' own files, not from these answers.
            accepted = [a for a in answers if isinstance(a, httpx.Response)]
            cut = [a for a in answers if isinstance(a, httpx.TransportError)]
            assert len(accepted) + len(cut) == BATCH, answers
            assert [a.status_code for a in accepted] == [202] * len(accepted)
            posted += len(accepted)
            return _accepted_by(metrics_dir, newcomer) > 0

        await eventually(newcomer_served, within=30, what="the new worker accepting webhooks")
        # The killed worker's counts are still in the sum.
        counted = sum(_accepted_by(metrics_dir, pid) for pid in workers | survivors)
        assert _accepted_by(metrics_dir, victim) > 0
        assert counted >= posted
        assert await _metrics_total(client, url) == counted


async def test_an_ingest_worker_whose_consumers_stopped_exits_1_and_is_replaced(
    redis: Redis, ingest: tuple[ServiceProcess, str]
) -> None:
    service, url = ingest
    workers = await _workers(service)
    await redis.flushdb()  # the consumer groups vanish: every worker's consumers stop

    async def replaced() -> set[int] | None:
        found = worker_pids(_pid(service))
        return found if len(found) == WORKERS and not found & workers else None

    await eventually(replaced, within=30, what="both workers replaced")
    exits = [line for line in _log(service) if line.get("event") == "serving.worker_replaced"]
    assert {(line["pid"], line["exitcode"]) for line in exits} == {(pid, 1) for pid in workers}
    async with _client() as client:
        await _post_batch(client, url, 0)


async def test_dispatcher_workers_send_each_delivery_of_a_fan_out_once(
    redis: Redis, redis_url: str, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    emails = [f"reader-{n:02d}@example.com" for n in range(30)]
    plan = write_plan(tmp_path, emails, cadence=dict.fromkeys(Severity))
    service, _ = _service(
        "dispatcher",
        tmp_path,
        CLARION_REDIS_URL=redis_url,
        CLARION_PLAN=str(plan),
        CLARION_SMTP_HOST=smtp_server.host,
        CLARION_SMTP_PORT=str(smtp_server.port),
        # Reclaims and leases at their defaults (a minute): every job is sent by the
        # worker that read it, and none is taken over from a slow send.
        CLARION_POLLING_INTERVAL_MS="100",
        CLARION_CHANNEL_CONCURRENCY="4",
        CLARION_MAX_RECORDS="4",
    )
    service.start()
    try:
        service.wait_ready()
        workers = await _workers(service)
        opened = make_incident_opened(make_incident(), event_id="ev-workers")
        async with RedisBroker(redis_url) as broker:
            await broker.publish(opened, stream=INCIDENT_EVENTS)

        smtp_server.mailbox.wait_for(lambda ms: len(ms) >= len(emails), timeout=60)

        async def all_done() -> bool:
            for stream in (INCIDENT_EVENTS, delivery_stream("email")):
                groups = await redis.xinfo_groups(stream)
                (group,) = [g for g in groups if _text(g["name"]) == DISPATCHER_GROUP]
                if group["pending"] or group["lag"]:
                    return False
            return True

        await eventually(all_done, within=30, what="every job read and acknowledged")
        consumers = await redis.xinfo_consumers(delivery_stream("email"), DISPATCHER_GROUP)
        readers = {_text(c["name"]) for c in consumers} - {
            _text(c["name"]) for c in consumers if _text(c["name"]).endswith("-reclaim")
        }
    finally:
        service.stop()

    received = sorted(str(m["X-Envelope-To"]) for m in smtp_server.mailbox.messages)
    assert received == sorted(emails)
    # Each worker reads the jobs as a consumer of its own, named after its process.
    assert {int(name.rsplit("-", 2)[1]) for name in readers} == workers
    assert service.process is not None
    assert service.process.returncode == 0, service.log_tail()


def _alive(pids: set[int]) -> list[int]:
    return [pid for pid in pids if os.path.exists(f"/proc/{pid}")]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def test_a_consumer_name_set_for_the_service_is_made_unique_per_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLARION_CONSUMER_NAME", "dispatcher-a")
    assert worker_settings().consumer_name == f"dispatcher-a-{os.getpid()}"
    monkeypatch.delenv("CLARION_CONSUMER_NAME")
    assert str(os.getpid()) in worker_settings().consumer_name


def test_metrics_kept_in_memory_are_not_passed_off_as_every_workers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    own = CollectorRegistry()
    assert exposed_registry(own) is own
    # prometheus_client was imported without the variable: its values are in memory.
    monkeypatch.setenv(MULTIPROCESS_DIR, str(tmp_path))
    with pytest.raises(RuntimeError, match="after prometheus_client was imported"):
        exposed_registry(own)
