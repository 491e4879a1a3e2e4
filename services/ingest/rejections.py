"""The record of rejected webhook requests: a metric, a log line and a Redis sample.

Every 4xx the ingest API answers goes through :meth:`RejectionLog.record`. The
sample is a capped Redis list (newest first) of :class:`Rejection` records whose
body excerpt is redacted: no credentials, configured secrets, email addresses or
phone numbers are stored, and nothing from the request headers is logged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from pydantic import AwareDatetime, BaseModel, ConfigDict
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.ingest.metrics import IngestMetrics
from shared.clock import Clock, SystemClock
from shared.http_errors import client_error
from shared.logs import get_logger
from shared.redaction import REDACTED, is_secret_key, redact_text
from shared.streams import REJECTIONS

BODY_EXCERPT_BYTES: Final = 2048

# Credentials that shared.redaction does not know by name (PagerDuty's, Opsgenie's).
_EXTRA_SECRET_KEYS: Final = frozenset(
    {"routing_key", "service_key", "integration_key", "apikey", "api_key"}
)
# "key": value in JSON (a string, maybe cut short by the excerpt, or a number/literal).
_JSON_VALUE = re.compile(
    r"""(?P<lead>"(?P<key>[^"\\]{1,64})"\s*:\s*)"""
    r"""(?P<value>"(?:[^"\\]|\\.)*(?:"|$)|[^\s,{}\[\]"]+)"""
)
# key=value in forms and query strings (also inside JSON strings, e.g. URLs).
_FORM_VALUE = re.compile(r"""(?P<key>\b[\w.-]{1,64})=(?P<value>[^&\s"']+)""")

log = get_logger("clarion.ingest.rejections")


class Rejection(BaseModel):
    """One rejected request, as stored."""

    model_config = ConfigDict(frozen=True)

    at: AwareDatetime
    source: str
    status: int
    reason: str
    message: str
    client: str | None
    content_length: int | None
    body_excerpt: str


class RejectionLog:
    """Counts, logs and samples rejections. ``size`` 0 keeps no sample in Redis."""

    def __init__(
        self,
        redis: Redis,
        size: int,
        *,
        metrics: IngestMetrics | None = None,
        secrets: Iterable[str] = (),
        clock: Clock | None = None,
    ) -> None:
        if size < 0:
            raise ValueError("the rejection sample size cannot be negative")
        self._redis = redis
        self._size = size
        self._metrics = metrics
        self._secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))
        self._clock = clock or SystemClock()
        self._key = REJECTIONS

    async def record(
        self,
        *,
        source: str,
        status: int,
        reason: str,
        message: str,
        client: str | None,
        body: bytes | None = None,
        content_length: int | None = None,
    ) -> Rejection:
        """Count, log and (best effort) store one rejection; returns what was stored."""
        rejection = Rejection(
            at=self._clock.now(),
            source=source,
            status=status,
            reason=reason,
            message=self._scrub(redact_text(message)),
            client=client,
            content_length=content_length if content_length is not None else _len(body),
            body_excerpt=self.excerpt(body or b""),
        )
        if self._metrics is not None:
            self._metrics.count_rejected(source, reason)
        log.warning(
            "ingest.rejected",
            source=source,
            status=status,
            reason=reason,
            detail=rejection.message,
            client=client,
            content_length=rejection.content_length,
        )
        if self._size:
            await self._store(rejection)
        return rejection

    async def record_error(
        self,
        exc: BaseException,
        *,
        source: str,
        client: str | None,
        body: bytes | None = None,
        content_length: int | None = None,
    ) -> Rejection | None:
        """:meth:`record` a Clarion client error (401, 429, ...); None for anything else."""
        answer = client_error(exc)
        if answer is None:
            return None
        status, reason = answer
        return await self.record(
            source=source,
            status=status,
            reason=reason,
            message=str(exc),
            client=client,
            body=body,
            content_length=content_length,
        )

    async def recent(self, limit: int = 20) -> list[Rejection]:
        """The newest ``limit`` stored rejections, newest first."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        raw = await self._redis.lrange(self._key, 0, limit - 1)
        return [Rejection.model_validate_json(item) for item in raw]

    def excerpt(self, body: bytes) -> str:
        """The first :data:`BODY_EXCERPT_BYTES` of ``body`` as text, redacted."""
        # Read past the cut by the longest secret, so a secret on the boundary is still found.
        reach = BODY_EXCERPT_BYTES + max((len(s.encode()) for s in self._secrets), default=0)
        text = body[:reach].decode("utf-8", errors="replace")
        text = self._scrub(text)
        text = text.encode()[:BODY_EXCERPT_BYTES].decode("utf-8", errors="ignore")
        text = _JSON_VALUE.sub(_mask_json_value, text)
        return redact_text(_FORM_VALUE.sub(_mask_form_value, text))

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    async def _store(self, rejection: Rejection) -> None:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.lpush(self._key, rejection.model_dump_json())
                pipe.ltrim(self._key, 0, self._size - 1)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            # The sample is a diagnostic aid: losing one never changes the answer.
            log.warning("ingest.rejection_not_stored", error=f"{type(exc).__name__}: {exc}")


def _mask_json_value(match: re.Match[str]) -> str:
    return f'{match["lead"]}"{REDACTED}"' if _is_secret(match["key"]) else match.group(0)


def _mask_form_value(match: re.Match[str]) -> str:
    return f"{match['key']}={REDACTED}" if _is_secret(match["key"]) else match.group(0)


def _is_secret(key: str) -> bool:
    return is_secret_key(key) or key.lower() in _EXTRA_SECRET_KEYS


def _len(body: bytes | None) -> int | None:
    return None if body is None else len(body)
