"""Atlassian Statuspage: one provider incident per Clarion incident, created then updated.

The first update of a Clarion incident creates a Statuspage incident
(``POST /v1/pages/{page_id}/incidents``); every later one patches it
(``PATCH /v1/pages/{page_id}/incidents/{id}``), which appends an update to its
timeline. Which provider incident belongs to which Clarion incident is kept in
Redis, one hash per incident (:class:`ProviderIncidents`, key
``clarion:statuspage-io:incident:<clarion incident id>``).

Component statuses follow the incident: its severity while it is open (SEV1 major
outage, SEV2 partial outage, lower degraded performance), operational once
resolved. Components are the incident's ``components`` that
``CLARION_STATUSPAGE_COMPONENTS`` (``name=component-id`` pairs) names.

Only one attempt creates the provider incident: it holds
``clarion:statuspage-io:creating:<id>`` meanwhile, and another attempt for the same
incident gets a retry. A late retry of an older update (a lower incident revision
than the page shows) adds its words but leaves status and components alone, so
the page never goes backwards. Rate limits come as 429, or 420 from older API
versions, both with ``Retry-After``.

Statuspage takes no idempotency key, so a crash between its answer and our
record can duplicate an update: ``idempotent`` is False.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.dispatcher.channels.context import DriverContext
from services.dispatcher.channels.http_outcome import (
    classify_response,
    describe,
    retry_after,
    transport_failure,
)
from services.dispatcher.channels.outcome import (
    NotConfigured,
    Outcome,
    Permanent,
    Retryable,
    Sent,
)
from services.dispatcher.fanout import Delivery
from services.dispatcher.rendering.messages import RenderedMessage
from shared.contracts import Incident, IncidentStatus, Severity
from shared.redis_values import as_text, str_keys

STATUSPAGE_IO_PREFIX: Final = "clarion:statuspage-io:"
"""Redis keys of this driver (shared/streams.py lists the others)."""
MAPPING_TTL: Final = timedelta(days=180)
"""How long a provider incident id is remembered after its last update."""

COMPONENT_STATUS: Final = {
    Severity.CRITICAL: "major_outage",
    Severity.ERROR: "partial_outage",
    Severity.WARNING: "degraded_performance",
    Severity.INFO: "degraded_performance",
}
IMPACT: Final = {
    Severity.CRITICAL: "critical",
    Severity.ERROR: "major",
    Severity.WARNING: "minor",
    Severity.INFO: "minor",
}
OPERATIONAL: Final = "operational"
RATE_LIMITED: Final = frozenset({420, 429})  # Statuspage answered 420 before 429, and may still


# The provider incident a Clarion incident maps to (shared with the Cachet driver).

_RECORD = """
local current = tonumber(redis.call('HGET', KEYS[1], 'revision') or '-1')
if tonumber(ARGV[2]) >= current then
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'revision', ARGV[2], 'status', ARGV[3])
else
  redis.call('HSET', KEYS[1], 'id', ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class ProviderIncident:
    id: str
    revision: int
    """The newest Clarion incident revision the provider shows."""
    status: IncidentStatus | None
    """The Clarion status of that revision."""


class ProviderIncidents:
    """Clarion incident id -> provider incident id, in Redis, with a creation claim.

    ``<prefix>incident:<id>`` is a hash (``id``, ``revision``, ``status``);
    ``<prefix>creating:<id>`` is held (SET NX PX) by the one attempt creating the
    provider incident, so two dispatchers never create two for one incident.
    """

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self.prefix = prefix

    def key(self, incident_id: str) -> str:
        return f"{self.prefix}incident:{incident_id}"

    def claim_key(self, incident_id: str) -> str:
        return f"{self.prefix}creating:{incident_id}"

    async def get(self, incident_id: str) -> ProviderIncident | None:
        fields = str_keys(await self._redis.hgetall(self.key(incident_id)))
        if "id" not in fields:
            return None
        status_text = as_text(fields.get("status", b""))
        try:
            status = IncidentStatus(status_text) if status_text else None
        except ValueError:
            status = None
        return ProviderIncident(
            id=as_text(fields["id"]),
            revision=int(as_text(fields.get("revision", b"0")) or 0),
            status=status,
        )

    async def claim(self, incident_id: str, ttl: timedelta) -> str | None:
        """A token when this attempt may create the provider incident; None when another is."""
        token = secrets.token_hex(8)
        claimed = await self._redis.set(
            self.claim_key(incident_id), token, nx=True, px=max(int(ttl.total_seconds() * 1000), 1)
        )
        return token if claimed else None

    async def release(self, incident_id: str, token: str) -> None:
        await self._redis.eval(_RELEASE, 1, self.claim_key(incident_id), token)

    async def record(
        self, incident_id: str, provider_id: str, revision: int, status: IncidentStatus
    ) -> None:
        """Remember ``provider_id``, and ``revision``/``status`` unless a newer one is shown."""
        await self._redis.eval(
            _RECORD,
            1,
            self.key(incident_id),
            provider_id,
            str(revision),
            status.value,
            str(int(MAPPING_TTL.total_seconds() * 1000)),
        )

    async def forget(self, incident_id: str) -> None:
        await self._redis.delete(self.key(incident_id))


def component_ids(pairs: Iterable[str], components: Iterable[str]) -> list[str]:
    """The provider ids of ``components`` per ``name=id`` pairs (names match case-blind)."""
    by_name: dict[str, str] = {}
    for pair in pairs:
        name, sep, component_id = pair.partition("=")
        if sep and name.strip() and component_id.strip():
            by_name.setdefault(name.strip().casefold(), component_id.strip())
    found: list[str] = []
    for name in components:
        match = by_name.get(name.strip().casefold())
        if match is not None and match not in found:
            found.append(match)
    return found


def clarion_status(message: RenderedMessage, incident: Incident) -> IncidentStatus:
    """The status this message announces (the renderer's, else the incident's)."""
    try:
        return IncidentStatus(message.status) if message.status else incident.status
    except ValueError:
        return incident.status


def is_stale(known: ProviderIncident | None, incident: Incident) -> bool:
    """True when the provider already shows a newer revision than ``incident`` (a late retry)."""
    return known is not None and incident.revision < known.revision


def provider_answer_id(response: httpx.Response) -> str | None:
    try:
        data = response.json()
    except ValueError:
        return None
    if isinstance(data, Mapping) and isinstance(data.get("data"), Mapping):
        data = data["data"]  # Cachet wraps the item
    if not isinstance(data, Mapping):
        return None
    value = data.get("id")
    return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else None


def claim_ttl(ctx: DriverContext) -> timedelta:
    """Long enough for one create request to finish or time out."""
    return timedelta(seconds=ctx.settings.http_timeout_seconds * 2 + 5)


def busy(provider: str, ctx: DriverContext) -> Retryable:
    wait = timedelta(seconds=math.ceil(ctx.settings.http_timeout_seconds))
    return Retryable(f"{provider}: another attempt is creating this incident there", wait)


class StatuspageIoChannel:
    name = "status_page"
    provider = "statuspage"
    idempotent = False  # Statuspage takes no idempotency key

    def __init__(self, ctx: DriverContext) -> None:
        self._ctx = ctx
        self.incidents = ProviderIncidents(ctx.redis, STATUSPAGE_IO_PREFIX)

    def _config(self) -> tuple[str, str] | NotConfigured:
        settings = self._ctx.settings
        key = settings.statuspage_api_key.get_secret_value() if settings.statuspage_api_key else ""
        missing = [
            name
            for name, value in (
                ("CLARION_STATUSPAGE_API_KEY", key),
                ("CLARION_STATUSPAGE_PAGE_ID", settings.statuspage_page_id or ""),
            )
            if not value.strip()
        ]
        if missing:
            return NotConfigured(f"set {' and '.join(missing)} for Atlassian Statuspage")
        return key.strip(), (settings.statuspage_page_id or "").strip()

    def incident_body(
        self, message: RenderedMessage, incident: Incident, *, stale: bool
    ) -> dict[str, Any]:
        """The ``incident`` object: the words, and unless stale the title, status and components.

        A stale update (an older revision than the page shows, e.g. a late retry) still
        adds its words but never moves the page's status or components backwards.
        """
        body: dict[str, Any] = {"body": message.text}
        if not stale:
            body["name"] = message.title
            status = clarion_status(message, incident)
            ids = component_ids(self._ctx.settings.statuspage_components, incident.components)
            component_status = (
                OPERATIONAL
                if status is IncidentStatus.RESOLVED
                else COMPONENT_STATUS[incident.severity]
            )
            body["status"] = status.value
            body["impact_override"] = IMPACT[incident.severity]
            if ids:
                body["component_ids"] = ids
                body["components"] = dict.fromkeys(ids, component_status)
        body["deliver_notifications"] = True
        return body

    async def send(self, message: RenderedMessage, recipient: str, delivery: Delivery) -> Outcome:
        config = self._config()
        if isinstance(config, NotConfigured):
            return config
        incident = delivery.incident
        if incident is None:
            return Permanent("statuspage: no incident state to post")
        try:
            return await self._send(config, message, incident, delivery)
        except RedisError as exc:
            return Retryable(f"statuspage: Redis: {type(exc).__name__}: {exc}")

    async def _send(
        self,
        config: tuple[str, str],
        message: RenderedMessage,
        incident: Incident,
        delivery: Delivery,
    ) -> Outcome:
        api_key, page_id = config
        base = f"{self._ctx.settings.statuspage_api_url.rstrip('/')}/v1/pages/{page_id}/incidents"
        headers = {"Authorization": f"OAuth {api_key}"}
        known = await self.incidents.get(delivery.incident_id)
        if known is None:
            return await self._create(base, headers, message, incident, delivery.incident_id)
        return await self._update(
            base, headers, message, incident, incident_id=delivery.incident_id, known=known
        )

    async def _create(
        self,
        base: str,
        headers: dict[str, str],
        message: RenderedMessage,
        incident: Incident,
        incident_id: str,
    ) -> Outcome:
        token = await self.incidents.claim(incident_id, claim_ttl(self._ctx))
        if token is None:
            return busy(self.provider, self._ctx)
        try:  # the mapping is recorded before the claim goes: no second create in between
            body = self.incident_body(message, incident, stale=False)
            try:
                response = await self._ctx.http.post(base, json={"incident": body}, headers=headers)
            except httpx.HTTPError as exc:
                return transport_failure(self.provider, exc)
            outcome = classify(response)
            if isinstance(outcome, Sent) and outcome.provider_id is not None:
                await self.incidents.record(
                    incident_id,
                    outcome.provider_id,
                    incident.revision,
                    clarion_status(message, incident),
                )
            return outcome
        finally:
            await self.incidents.release(incident_id, token)

    async def _update(
        self,
        base: str,
        headers: dict[str, str],
        message: RenderedMessage,
        incident: Incident,
        *,
        incident_id: str,
        known: ProviderIncident,
    ) -> Outcome:
        body = self.incident_body(message, incident, stale=is_stale(known, incident))
        try:
            response = await self._ctx.http.patch(
                f"{base}/{known.id}", json={"incident": body}, headers=headers
            )
        except httpx.HTTPError as exc:
            return transport_failure(self.provider, exc)
        if response.status_code == 404:
            # Deleted on Statuspage: forget it, and the next attempt opens a new one.
            await self.incidents.forget(incident_id)
            return Retryable(
                f"statuspage incident {known.id} is gone (404); the next attempt creates a new one"
            )
        outcome = classify(response)
        if not isinstance(outcome, Sent):
            return outcome
        await self.incidents.record(
            incident_id, known.id, incident.revision, clarion_status(message, incident)
        )
        return Sent(known.id)


def classify(response: httpx.Response) -> Outcome:
    """Generic, plus Statuspage's old rate-limit status 420."""
    if response.status_code in RATE_LIMITED:
        return Retryable(describe("statuspage", response), retry_after(response))
    return classify_response("statuspage", response, provider_answer_id(response))
