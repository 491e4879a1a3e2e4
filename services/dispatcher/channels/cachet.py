"""Cachet (2.x API): one Cachet incident per Clarion incident, then incident updates.

Cachet 2.x is the released, widely deployed line, and its API (``/api/v1``,
``X-Cachet-Token``) is stable; Cachet 3 is a rewrite with a different API
(``/api``, Sanctum bearer tokens) that few sites run yet. So this driver speaks 2.x:

- the first update creates the incident: ``POST /api/v1/incidents``
  ``{name, message, status, visible, notify, component_id, component_status}``;
- later ones add an update: ``POST /api/v1/incidents/{id}/updates``
  ``{status, message, component_id, component_status}``.

Statuses are numbers: incident 1 investigating, 2 identified, 3 watching
(monitoring), 4 fixed (resolved); component 1 operational, 2 performance issues,
3 partial outage, 4 major outage. A 2.x incident carries one component: the first
of the incident's components that ``CLARION_STATUSPAGE_COMPONENTS`` maps to a
(numeric) Cachet component id.

The Clarion -> Cachet incident id mapping lives in Redis
(``clarion:cachet:incident:<clarion incident id>``, see
:class:`~services.dispatcher.channels.statuspage_io.ProviderIncidents`).
"""

from __future__ import annotations

from typing import Any, Final

import httpx
from redis.exceptions import RedisError

from services.dispatcher.channels.context import DriverContext
from services.dispatcher.channels.http_outcome import classify_response, transport_failure
from services.dispatcher.channels.outcome import (
    NotConfigured,
    Outcome,
    Permanent,
    Retryable,
    Sent,
)
from services.dispatcher.channels.statuspage_io import (
    ProviderIncident,
    ProviderIncidents,
    busy,
    claim_ttl,
    clarion_status,
    component_ids,
    is_stale,
    provider_answer_id,
)
from services.dispatcher.fanout import Delivery
from services.dispatcher.rendering.messages import RenderedMessage
from shared.contracts import Incident, IncidentStatus, Severity

CACHET_PREFIX: Final = "clarion:cachet:"
"""Redis keys of this driver (shared/streams.py lists the others)."""

INCIDENT_STATUS: Final = {
    IncidentStatus.INVESTIGATING: 1,
    IncidentStatus.IDENTIFIED: 2,
    IncidentStatus.MONITORING: 3,
    IncidentStatus.RESOLVED: 4,
}
COMPONENT_STATUS: Final = {
    Severity.CRITICAL: 4,  # major outage
    Severity.ERROR: 3,  # partial outage
    Severity.WARNING: 2,  # performance issues
    Severity.INFO: 2,
}
OPERATIONAL: Final = 1


class CachetChannel:
    name = "status_page"
    provider = "cachet"
    idempotent = False  # Cachet takes no idempotency key

    def __init__(self, ctx: DriverContext) -> None:
        self._ctx = ctx
        self.incidents = ProviderIncidents(ctx.redis, CACHET_PREFIX)

    def _config(self) -> tuple[str, str] | NotConfigured:
        settings = self._ctx.settings
        token = settings.cachet_api_token.get_secret_value() if settings.cachet_api_token else ""
        url = (settings.cachet_url or "").strip().rstrip("/")
        missing = [
            name
            for name, value in (("CLARION_CACHET_URL", url), ("CLARION_CACHET_API_TOKEN", token))
            if not value.strip()
        ]
        if missing:
            return NotConfigured(f"set {' and '.join(missing)} for Cachet")
        return url, token.strip()

    def _component(self, incident: Incident, status: IncidentStatus) -> dict[str, int]:
        """``component_id`` and ``component_status`` for the incident's first mapped component."""
        for component_id in component_ids(
            self._ctx.settings.statuspage_components, incident.components
        ):
            if component_id.isdigit():
                resolved = status is IncidentStatus.RESOLVED
                return {
                    "component_id": int(component_id),
                    "component_status": (
                        OPERATIONAL if resolved else COMPONENT_STATUS[incident.severity]
                    ),
                }
        return {}

    async def send(self, message: RenderedMessage, recipient: str, delivery: Delivery) -> Outcome:
        config = self._config()
        if isinstance(config, NotConfigured):
            return config
        incident = delivery.incident
        if incident is None:
            return Permanent("cachet: no incident state to post")
        url, token = config
        headers = {"X-Cachet-Token": token}
        try:
            known = await self.incidents.get(delivery.incident_id)
            if known is None:
                return await self._create(url, headers, message, incident, delivery.incident_id)
            return await self._update(
                url, headers, message, incident, incident_id=delivery.incident_id, known=known
            )
        except RedisError as exc:
            return Retryable(f"cachet: Redis: {type(exc).__name__}: {exc}")

    async def _create(
        self,
        url: str,
        headers: dict[str, str],
        message: RenderedMessage,
        incident: Incident,
        incident_id: str,
    ) -> Outcome:
        token = await self.incidents.claim(incident_id, claim_ttl(self._ctx))
        if token is None:
            return busy(self.provider, self._ctx)
        status = clarion_status(message, incident)
        body: dict[str, Any] = {
            "name": message.title,
            "message": message.text,
            "status": INCIDENT_STATUS[status],
            "visible": 1,
            "notify": True,
            **self._component(incident, status),
        }
        try:  # the mapping is recorded before the claim goes: no second create in between
            try:
                response = await self._ctx.http.post(
                    f"{url}/api/v1/incidents", json=body, headers=headers
                )
            except httpx.HTTPError as exc:
                return transport_failure(self.provider, exc)
            outcome = classify_response(self.provider, response, provider_answer_id(response))
            if isinstance(outcome, Sent) and outcome.provider_id is not None:
                await self.incidents.record(
                    incident_id, outcome.provider_id, incident.revision, status
                )
            return outcome
        finally:
            await self.incidents.release(incident_id, token)

    async def _update(
        self,
        url: str,
        headers: dict[str, str],
        message: RenderedMessage,
        incident: Incident,
        *,
        incident_id: str,
        known: ProviderIncident,
    ) -> Outcome:
        status = clarion_status(message, incident)
        body: dict[str, Any] = {"status": INCIDENT_STATUS[status], "message": message.text}
        if is_stale(known, incident):
            # A late retry of an older update: its words, under the status Cachet already
            # shows, so the incident and its component never go backwards.
            body["status"] = INCIDENT_STATUS[known.status or status]
        else:
            body.update(self._component(incident, status))
        try:
            response = await self._ctx.http.post(
                f"{url}/api/v1/incidents/{known.id}/updates", json=body, headers=headers
            )
        except httpx.HTTPError as exc:
            return transport_failure(self.provider, exc)
        if response.status_code == 404:
            # Deleted in Cachet: forget it, and the next attempt opens a new one.
            await self.incidents.forget(incident_id)
            return Retryable(
                f"cachet incident {known.id} is gone (404); the next attempt creates a new one"
            )
        outcome = classify_response(self.provider, response)
        if not isinstance(outcome, Sent):
            return outcome
        await self.incidents.record(incident_id, known.id, incident.revision, status)
        return Sent(known.id)
