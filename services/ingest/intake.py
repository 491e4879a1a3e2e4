"""The front door every webhook goes through: bounded read, credentials, rate limit.

:meth:`Intake.session` wraps one request. Inside it, :meth:`Session.receive`
reads the body (413 beyond the limit, without buffering it whole), checks the
source's credentials (401/403) and its rate limit (429). Any client error raised
in the block, there or later (400, 422), is counted, logged and sampled by the
:class:`RejectionLog` before the app answers it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from pydantic import BaseModel
from redis.exceptions import RedisError
from starlette.requests import Request

from services.ingest.body import parse_json, read_body, validate
from services.ingest.credentials import InboundRequest, SourceCredentials, authenticate
from services.ingest.metrics import IngestMetrics
from services.ingest.rate_limit import RateLimiter
from services.ingest.rejections import RejectionLog
from shared.clock import Clock
from shared.errors import BodyTooLarge, ClarionError, RetryableFailure
from shared.logs import get_logger

M = TypeVar("M", bound=BaseModel)

log = get_logger("clarion.ingest.intake")

_UNPARSED: Final = object()


@dataclass
class Session:
    """One webhook request while it is being received."""

    intake: Intake
    request: Request
    source: str
    body: bytes | None = None
    scheme: str | None = None
    status: int = 202  # what the route answers when nothing goes wrong; it may change it
    _parsed: Any = field(default=_UNPARSED, repr=False)

    @property
    def client(self) -> str | None:
        return self.request.client.host if self.request.client else None

    async def read(self) -> bytes:
        """The body, bounded by ``CLARION_MAX_BODY_BYTES``."""
        self.body = await read_body(self.request, self.intake.max_body_bytes)
        return self.body

    async def receive(self, *, routing_key: str | None = None) -> bytes:
        """Read, authenticate and rate-limit; the raw body once all three pass."""
        body = self.body if self.body is not None else await self.read()
        self.authenticate(routing_key=routing_key)
        await self.intake.limiter.check(self.source)
        return body

    def authenticate(self, *, routing_key: str | None = None) -> str:
        assert self.body is not None, "read the body first: signatures cover it"
        inbound = InboundRequest.from_request(self.request, self.body)
        creds = self.intake.credentials[self.source]
        self.scheme = authenticate(
            self.source, creds, inbound, self.intake.clock.now(), routing_key=routing_key
        )
        return self.scheme

    def json(self) -> Any:
        """The body as JSON (parsed once), or a 400."""
        if self._parsed is _UNPARSED:
            assert self.body is not None
            self._parsed = parse_json(self.body)
        return self._parsed

    def model(self, model: type[M]) -> M:
        """The body as ``model``, or a 422 naming the field."""
        return validate(model, self.json())

    def check_count(self, alerts: int) -> None:
        if alerts > self.intake.max_alerts:
            raise BodyTooLarge(
                f"this request carries {alerts} alerts; one request may carry at most "
                f"{self.intake.max_alerts} (CLARION_MAX_ALERTS_PER_REQUEST)"
            )


@dataclass
class Intake:
    credentials: Mapping[str, SourceCredentials]
    limiter: RateLimiter
    rejections: RejectionLog
    metrics: IngestMetrics
    clock: Clock
    max_body_bytes: int
    max_alerts: int

    @asynccontextmanager
    async def session(self, request: Request, source: str) -> AsyncIterator[Session]:
        """One request from ``source``; client errors raised inside are recorded, then re-raised."""
        session = Session(self, request, source)
        started = time.perf_counter()
        status: int | None = None
        try:
            yield session
        except (RetryableFailure, RedisError):
            status = 503  # nothing accepted, and not the sender's fault: no rejection
            raise
        except ClarionError as exc:
            declared = request.headers.get("content-length", "")
            rejection = await self.rejections.record_error(
                exc,
                source=source,
                client=session.client,
                body=session.body,
                content_length=int(declared) if declared.isdigit() else None,
            )
            status = rejection.status if rejection else 503
            raise
        except Exception:
            status = 500
            raise
        finally:
            answered = session.status if status is None else status
            self.metrics.observe_request(source, answered, time.perf_counter() - started)
