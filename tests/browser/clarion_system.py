"""The whole system as a reader meets it: real services over a real Valkey, with one incident.

An Alertmanager sample opens the incident, an operator posts an update saying the cause
is identified, and the helpers here wait until the status page and the delivery log
show both, so browser tests start from a page that is already complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, cast

import httpx

from shared.contracts import Severity
from tests.browser.artifacts import REPO_ROOT
from tests.support.plans import write_plan
from tests.support.processes import System
from tests.support.smtp import SmtpServer
from tests.support.waiting import eventually

OPS_TOKEN: Final = "browser-ops-token"
INGEST_TOKEN: Final = "browser-ingest-token"
EMAILS: Final = ("alice@example.com", "bob@example.org")
UPDATE_MESSAGE: Final = "We found a faulty configuration change and are rolling it back."
FIRING_SAMPLE: Final = REPO_ROOT / "services" / "ingest" / "samples" / "alertmanager_firing.json"
# An hour between updates: the page a test reads holds exactly what the fixture posted.
CADENCE: Final = dict.fromkeys(Severity, timedelta(hours=1))
FAST_PROCESSES: Final = {
    "CLARION_RECLAIM_IDLE_MS": "1500",
    "CLARION_IDEMPOTENCY_LEASE_MS": "1500",
    "CLARION_POLLING_INTERVAL_MS": "100",
    "CLARION_SCHEDULER_TICK_MS": "100",
    "CLARION_SCHEDULER_LEASE_MS": "2000",
}


@dataclass(frozen=True)
class ServedIncident:
    """The incident the browser tests read, as the system published it."""

    id: str
    title: str  # as the status page shows it (the customer-facing title)
    ops_title: str  # as operators know it (from the alerts)
    update_message: str
    posted: tuple[datetime, ...]  # when each update on its timeline was posted, oldest first
    dispatcher_url: str

    @property
    def status_url(self) -> str:
        return f"{self.dispatcher_url}/status"

    @property
    def page_path(self) -> str:
        return f"/status/incidents/{self.id}"


def make_system(redis_url: str, smtp: SmtpServer, workdir: Path) -> System:
    """Ingest, dispatcher and scheduler on ``redis_url``, emailing through ``smtp``."""
    plan = write_plan(workdir, EMAILS, cadence=CADENCE)
    env = {
        **FAST_PROCESSES,
        "CLARION_PLAN": str(plan),
        "CLARION_REDIS_URL": redis_url,
        "CLARION_SMTP_HOST": smtp.host,
        "CLARION_SMTP_PORT": str(smtp.port),
        "CLARION_INGEST_TOKEN": INGEST_TOKEN,
        "CLARION_OPS_TOKEN": OPS_TOKEN,
    }
    return System(env=env, log_dir=workdir)


def firing_alert(now: datetime) -> bytes:
    """The shipped Alertmanager sample, its alerts starting at ``now``."""
    payload: dict[str, Any] = json.loads(FIRING_SAMPLE.read_text(encoding="utf-8"))
    started = now.astimezone(UTC).isoformat().replace("+00:00", "Z")
    for alert in payload["alerts"]:
        alert["startsAt"] = started
    return json.dumps(payload).encode()


async def open_incident(client: httpx.AsyncClient, system: System) -> str:
    response = await client.post(
        f"{system.ingest_url}/v1/alerts/alertmanager",
        content=firing_alert(datetime.now(UTC)),
        headers={"Authorization": f"Bearer {INGEST_TOKEN}", "Content-Type": "application/json"},
    )
    assert response.status_code == 202, response.text
    return cast(str, response.json()["incident_id"])


async def post_identified_update(
    client: httpx.AsyncClient, system: System, incident_id: str, message: str
) -> str:
    """Post an operator's update (status: identified); the incident's internal title."""
    response = await client.post(
        f"{system.ingest_url}/v1/incidents/{incident_id}/updates",
        json={"message": message, "status": "identified"},
        headers={"Authorization": f"Bearer {OPS_TOKEN}"},
    )
    assert response.status_code == 201, response.text
    return cast(str, response.json()["incident"]["title"])


async def published(
    client: httpx.AsyncClient, system: System, incident_id: str, message: str
) -> dict[str, Any]:
    """Wait until the status page's summary (``/status.json``, Statuspage's shape) shows
    ``message`` among the incident's updates; the incident as shown there."""

    async def shown() -> dict[str, Any] | None:
        summary = (await client.get(f"{system.dispatcher_url}/status.json")).json()
        for incident in summary["incidents"]:
            bodies = " ".join(u["body"] for u in incident["incident_updates"])
            if incident["id"] == incident_id and message in bodies:
                return cast(dict[str, Any], incident)
        return None

    return await eventually(shown, within=30.0, what="the operator's update on the status page")


async def sent_deliveries(
    client: httpx.AsyncClient, system: System, incident_id: str
) -> list[dict[str, Any]]:
    """Wait until the delivery log records sent emails for the incident; those records."""

    async def sent() -> list[dict[str, Any]]:
        response = await client.get(
            f"{system.dispatcher_url}/v1/deliveries",
            params={"incident_id": incident_id},
            headers={"Authorization": f"Bearer {OPS_TOKEN}"},
        )
        records = cast(list[dict[str, Any]], response.json()["deliveries"])
        return [r for r in records if r["channel"] == "email" and r["status"] == "sent"]

    return await eventually(sent, within=30.0, what="sent emails in the delivery log")


async def serve_incident(system: System) -> ServedIncident:
    """Open an incident, post an operator update, and wait until both are published."""
    async with httpx.AsyncClient(timeout=10) as client:
        incident_id = await open_incident(client, system)
        ops_title = await post_identified_update(client, system, incident_id, UPDATE_MESSAGE)
        shown = await published(client, system, incident_id, UPDATE_MESSAGE)
        await sent_deliveries(client, system, incident_id)
    posted = sorted(datetime.fromisoformat(u["created_at"]) for u in shown["incident_updates"])
    return ServedIncident(
        id=incident_id,
        title=shown["name"],
        ops_title=ops_title,
        update_message=UPDATE_MESSAGE,
        posted=tuple(posted),
        dispatcher_url=system.dispatcher_url,
    )
