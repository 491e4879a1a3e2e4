"""How one send ended: sent, worth retrying, or hopeless."""

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


Outcome = Sent | Retryable | Permanent
