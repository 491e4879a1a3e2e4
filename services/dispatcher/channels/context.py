"""What every driver is built from: settings, the plan, the shared HTTP client."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from redis.asyncio import Redis

from services.dispatcher.channels.asyncio_network import direct_transport
from services.dispatcher.fanout import Delivery
from shared.clock import Clock
from shared.plan import Plan
from shared.settings import Settings


@dataclass(frozen=True)
class DriverContext:
    settings: Settings
    plan: Plan
    http: httpx.AsyncClient
    redis: Redis
    clock: Clock
    environ: Mapping[str, str]
    """Where ``*_env`` names in the plan are looked up (``os.environ`` in production)."""

    def recipient_entry(self, delivery: Delivery) -> Any:
        """The plan's entry behind a delivery's recipient (an account, a webhook, an address)."""
        return self.plan.audiences[delivery.audience].recipient(
            delivery.channel, delivery.recipient
        )

    def secret(self, env_name: str | None) -> str | None:
        """The value of the environment variable ``env_name``; None when unset or empty."""
        if not env_name:
            return None
        return self.environ.get(env_name) or None


def http_client(settings: Settings) -> httpx.AsyncClient:
    """The one client every driver shares: bounded timeouts, no redirects followed, its
    connections on plain asyncio (:mod:`.asyncio_network`) and made directly: no proxy
    from the environment, so the address the SSRF guard checked is the one connected to."""
    timeout = httpx.Timeout(
        settings.http_timeout_seconds, connect=settings.http_connect_timeout_seconds
    )
    return httpx.AsyncClient(
        timeout=timeout,
        follow_redirects=False,
        transport=direct_transport(httpx.Limits(max_connections=200, max_keepalive_connections=50)),
        headers={"User-Agent": "Clarion (incident communication)"},
    )
