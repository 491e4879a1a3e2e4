"""How one send ended: sent, worth retrying, hopeless, or not configured at all."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class Sent:
    provider_id: str | None


@dataclass(frozen=True)
class Retryable:
    error: str
    retry_after: timedelta | None = None


@dataclass(frozen=True)
class Permanent:
    error: str


@dataclass(frozen=True)
class NotConfigured:
    """The channel has no credentials for this recipient: the message goes to the outbox."""

    reason: str


Outcome = Sent | Retryable | Permanent | NotConfigured
