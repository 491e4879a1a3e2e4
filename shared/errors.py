"""Every exception type Clarion raises on purpose, in one tree.

ClarionError
├── InvalidPayload        bad input from outside: answered with a 422 naming the field
├── MalformedBody         a body that is not JSON at all: answered with a 400
├── BodyTooLarge          a body over the size limit: answered with a 413
├── Unauthorized          missing or wrong credentials: a 401 (other credentials may work)
├── Forbidden             refused whatever the credentials: a 403 (e.g. a remote client
│                         while ingest is loopback-only)
├── RateLimited           too many requests from one source: a 429 with Retry-After
├── PermanentFailure      retrying cannot help: the message goes to the dead-letter stream
└── RetryableFailure      may work later: the message stays pending and is reclaimed
    └── InProgressElsewhere   a live worker is on it right now: look again later, and this
                              look does not count toward the dead-letter limit
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

BEARER_CHALLENGE: Final = "Bearer"


class ClarionError(Exception):
    """Base of every deliberate error in Clarion."""


@dataclass(frozen=True)
class FieldError:
    field: str
    reason: str


class InvalidPayload(ClarionError):
    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.reason}" for e in errors))


class MalformedBody(ClarionError):
    pass


class BodyTooLarge(ClarionError):
    pass


class Unauthorized(ClarionError):
    """``challenges`` become the ``WWW-Authenticate`` header of the 401."""

    def __init__(
        self,
        message: str = "missing or wrong credentials",
        *,
        challenges: tuple[str, ...] = (BEARER_CHALLENGE,),
    ) -> None:
        self.challenges = challenges
        super().__init__(message)


class Forbidden(ClarionError):
    pass


class NotFound(ClarionError):
    """What the request names does not exist (answered with a 404)."""


class RateLimited(ClarionError):
    """``retry_after_seconds`` (at least 1) becomes the ``Retry-After`` header of the 429."""

    def __init__(self, retry_after_seconds: int, message: str | None = None) -> None:
        self.retry_after_seconds = max(1, int(retry_after_seconds))
        super().__init__(message or f"too many requests; retry after {self.retry_after_seconds} s")


class PermanentFailure(ClarionError):
    pass


class RetryableFailure(ClarionError):
    pass


class InProgressElsewhere(RetryableFailure):
    """Another worker, still alive, is handling what this message asks for (a delivery
    whose lease it keeps renewing). The message stays pending, and this delivery of it is
    not counted: a slow send is never dead-lettered while it is still in progress."""
