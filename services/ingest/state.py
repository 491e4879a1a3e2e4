"""What ingest's HTTP routes need, built once by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, cast

import httpx
from fastapi import Depends, Request
from faststream.redis import RedisBroker
from redis.asyncio import Redis

from services.ingest.grouping import group_alerts
from services.ingest.incident_store import ApplyResult, IncidentStore
from services.ingest.intake import Intake
from services.ingest.severity import SeverityMap, configured
from services.ingest.sns_signature import SnsVerifier
from shared.auth import check_bearer, is_loopback
from shared.clock import Clock
from shared.contracts import Alert
from shared.errors import Forbidden
from shared.plan import Plan
from shared.settings import Settings


@dataclass(frozen=True)
class Accepted:
    """What one webhook did, over every incident it touched."""

    incident_ids: list[str]
    events: list[str]
    duplicate: bool


@dataclass(frozen=True)
class IngestState:
    settings: Settings
    plan: Plan
    clock: Clock
    redis: Redis
    broker: RedisBroker
    store: IncidentStore
    intake: Intake
    sns: SnsVerifier
    http: httpx.AsyncClient
    _severities: dict[str, SeverityMap] = field(default_factory=dict)

    def severities(self, source: str, base: SeverityMap) -> SeverityMap:
        """``base`` with the plan's ``source_severities`` overrides, merged once."""
        if source not in self._severities:
            self._severities[source] = configured(source, base, self.plan.source_severities)
        return self._severities[source]

    async def accept(
        self, alerts: list[Alert], truncated: int = 0, external_url: str | None = None
    ) -> Accepted:
        """Store every alert with its group's incident; returns once all of it is durable."""
        results: list[ApplyResult] = []
        for group in group_alerts(alerts, self.settings.group_by).values():
            results.append(
                await self.store.apply(
                    group.key, group.alerts, truncated, external_url, aliases=group.aliases
                )
            )
        return Accepted(
            incident_ids=[r.incident_id for r in results if r.incident_id],
            events=[event for r in results for event in r.events],
            duplicate=bool(results) and all(r.duplicate for r in results),
        )

    def operator_auth(self, request: Request) -> None:
        """The ops token as a bearer token; with none configured, loopback clients only."""
        token = self.settings.ops_token
        if token is None:
            client = request.client.host if request.client else None
            if not is_loopback(client):
                raise Forbidden("CLARION_OPS_TOKEN is not set: the ops API answers loopback only")
            return
        check_bearer(request.headers.get("authorization"), token)


def get_state(request: Request) -> IngestState:
    return cast(IngestState, request.app.state.ingest)


async def _state(request: Request) -> IngestState:
    """``get_state`` as a dependency: async, so FastAPI calls it inline (a plain ``def``
    would cost every request a hop to the thread pool)."""
    return get_state(request)


State = Annotated[IngestState, Depends(_state)]
