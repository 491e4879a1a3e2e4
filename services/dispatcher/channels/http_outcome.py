"""Classify a provider's HTTP answer: 2xx sent, 408/425/429/5xx retry, other 4xx permanent.

Every HTTP driver uses these so that the same status means the same thing on
every channel. Drivers add what only their provider says (an error code in the
body, a rate-limit reset header) and fall back to :func:`classify_response`.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Final

import httpx

from services.dispatcher.channels.outcome import Outcome, Permanent, Retryable, Sent
from shared.redaction import REDACTED, redact_text

RETRYABLE_STATUSES: Final = frozenset({408, 425, 429, 500, 502, 503, 504})
_ERROR_EXCERPT: Final = 300


def retry_after(response: httpx.Response, now: datetime | None = None) -> timedelta | None:
    """``Retry-After`` as a delay: delta-seconds or an HTTP date; None when absent or garbled."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if math.isnan(seconds):
        return None
    if seconds < 0:  # a date in the past: now is fine
        return timedelta(0)
    return timedelta(seconds=min(seconds, 7 * 86400))


def excerpt(response: httpx.Response) -> str:
    """The start of a response body for an error message (never the whole body)."""
    try:
        text = response.text
    except (UnicodeDecodeError, httpx.ResponseNotRead):
        return "<unreadable body>"
    text = redact_text(" ".join(text.split()))
    return text[:_ERROR_EXCERPT] + ("…" if len(text) > _ERROR_EXCERPT else "")


def describe(provider: str, response: httpx.Response) -> str:
    return f"{provider} answered {response.status_code}: {excerpt(response)}"


def classify_response(
    provider: str, response: httpx.Response, provider_id: str | None = None
) -> Outcome:
    """The generic reading of an HTTP answer. ``provider_id`` is used when it is a 2xx."""
    status = response.status_code
    if 200 <= status < 300:
        return Sent(provider_id)
    if status in RETRYABLE_STATUSES:
        return Retryable(describe(provider, response), retry_after(response))
    return Permanent(describe(provider, response))


def transport_failure(provider: str, exc: httpx.HTTPError) -> Outcome:
    """A request that got no answer (refused, reset, timed out): worth another try.

    An invalid URL or an unsupported scheme will never work, so it is permanent.
    """
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return Permanent(f"{provider}: {type(exc).__name__}: {exc}")
    return Retryable(f"{provider}: {type(exc).__name__}: {exc}".rstrip(": "))


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object, or ``{}`` when it is not one (providers' errors vary)."""
    try:
        body = response.json()
    except (UnicodeDecodeError, ValueError):  # json.JSONDecodeError is a ValueError
        return {}
    return body if isinstance(body, dict) else {}


def scrub(text: str, *hidden: str) -> str:
    """``text`` without the ``hidden`` secrets, phone numbers or email addresses.

    Providers echo what they were sent (a number Twilio refused, a token in a
    message), and errors go to the delivery log and logs, so every error passes here.
    """
    for value in hidden:
        if len(value) >= 4:
            text = text.replace(value, REDACTED)
    return redact_text(text)


def scrubbed(outcome: Outcome, *hidden: str) -> Outcome:
    """``outcome`` with its error scrubbed (see :func:`scrub`)."""
    if isinstance(outcome, Retryable):
        return Retryable(scrub(outcome.error, *hidden), outcome.retry_after)
    if isinstance(outcome, Permanent):
        return Permanent(scrub(outcome.error, *hidden))
    return outcome
