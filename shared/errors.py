"""Every exception type Clarion raises on purpose, in one tree.

ClarionError
├── InvalidPayload        bad input from outside: answered with a 4xx naming the field
├── Unauthorized          missing or wrong credentials: answered with a 401
├── PermanentFailure      retrying cannot help: the message goes to the dead-letter stream
└── RetryableFailure      may work later: the message stays pending and is reclaimed
"""

from __future__ import annotations

from dataclasses import dataclass


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
    pass


class PermanentFailure(ClarionError):
    pass


class RetryableFailure(ClarionError):
    pass
