"""Is an SNS message really from AWS? Signature checks, and the subscription handshake.

:meth:`SnsVerifier.verify` checks, cheapest first, and fetches nothing for a
message that fails an earlier check:

1. ``SigningCertURL`` matches the allowed pattern (``CLARION_SNS_CERT_URL_PATTERN``:
   https on ``sns.<region>.amazonaws.com``), matched from its first character;
2. ``Timestamp`` is at most :data:`MAX_MESSAGE_AGE` old (and not from the future,
   give or take :data:`CLOCK_SKEW`), so a captured message cannot be replayed
   later. An hour is also the longest SNS may keep retrying an HTTP/S delivery;
3. the certificate (fetched once per URL, then cached) is valid now and its RSA
   key verifies ``Signature``: SHA1withRSA for ``SignatureVersion`` 1,
   SHA256withRSA for 2, over :func:`string_to_sign`.

Every failure is an :class:`SnsVerificationError` (an :class:`Unauthorized`: a
401, which SNS does not retry). :class:`CertificateUnavailable` is also a
:class:`RetryableFailure`: ingest answers 503 and SNS tries again later.
No error message contains the signature.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Collection
from datetime import timedelta
from typing import Final, Protocol

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from services.ingest.sources.sns import SnsMessage, SnsNotification, SnsSubscriptionConfirmation
from shared.clock import Clock, SystemClock
from shared.errors import RetryableFailure, Unauthorized

MAX_MESSAGE_AGE: Final = timedelta(hours=1)
CLOCK_SKEW: Final = timedelta(minutes=5)
FETCH_TIMEOUT_SECONDS: Final = 5.0
MAX_CERTIFICATE_BYTES: Final = 64 * 1024
MAX_CACHED_CERTIFICATES: Final = 32


class SnsVerificationError(Unauthorized):
    """The message cannot be trusted to come from AWS SNS."""


class UntrustedUrl(SnsVerificationError):
    """A ``SigningCertURL`` or ``SubscribeURL`` outside the allowed pattern: never fetched."""


class StaleMessage(SnsVerificationError):
    """``Timestamp`` is outside the accepted window: perhaps a replay."""


class BadSignature(SnsVerificationError):
    """The signature does not verify (or the certificate cannot vouch for it)."""


class UnknownTopic(SnsVerificationError):
    """The message comes from a topic Clarion is not configured to hear."""


class CertificateUnavailable(RetryableFailure, SnsVerificationError):
    """The signing certificate could not be fetched: the message may verify later."""


class SubscriptionNotConfirmed(RetryableFailure):
    """AWS did not accept the subscription confirmation: SNS will send it again."""


class CertificateFetcher(Protocol):
    async def certificate(self, url: str) -> x509.Certificate:
        """The X.509 certificate at ``url`` (an allowed URL), or :class:`CertificateUnavailable`."""
        ...


class HttpCertificateFetcher:
    """Fetches certificates with a shared client: bounded in time and size, no redirects.

    Certificates are cached by URL (SNS rotates them under new URLs), at most
    ``max_cached`` of them, the oldest forgotten first.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        timeout: float = FETCH_TIMEOUT_SECONDS,
        max_bytes: int = MAX_CERTIFICATE_BYTES,
        max_cached: int = MAX_CACHED_CERTIFICATES,
    ) -> None:
        self._client = client
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._max_cached = max_cached
        self._cache: dict[str, x509.Certificate] = {}
        self._lock = asyncio.Lock()  # one fetch at a time: concurrent misses fetch once

    async def certificate(self, url: str) -> x509.Certificate:
        if (cached := self._cache.get(url)) is not None:
            return cached
        async with self._lock:
            if (cached := self._cache.get(url)) is not None:
                return cached
            certificate = _load_pem(await self._download(url), url)
            if len(self._cache) >= self._max_cached:
                del self._cache[next(iter(self._cache))]
            self._cache[url] = certificate
            return certificate

    async def _download(self, url: str) -> bytes:
        try:
            async with self._client.stream(
                "GET", url, timeout=self._timeout, follow_redirects=False
            ) as response:
                if response.status_code != 200:
                    raise CertificateUnavailable(
                        f"the signing certificate at {_shown(url)} answered "
                        f"HTTP {response.status_code}"
                    )
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > self._max_bytes:
                        raise CertificateUnavailable(
                            f"the signing certificate at {_shown(url)} is over "
                            f"{self._max_bytes} bytes"
                        )
                return bytes(body)
        except httpx.InvalidURL as exc:
            raise UntrustedUrl(f"SigningCertURL {_shown(url)} is not a valid URL") from exc
        except httpx.HTTPError as exc:
            raise CertificateUnavailable(
                f"could not fetch the signing certificate at {_shown(url)}: {type(exc).__name__}"
            ) from exc


def _load_pem(data: bytes, url: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise CertificateUnavailable(f"{_shown(url)} is not a PEM certificate") from exc


class SnsVerifier:
    """Checks that SNS messages are authentic and fresh; build one per process."""

    def __init__(
        self,
        fetcher: CertificateFetcher,
        cert_url_pattern: str,
        *,
        clock: Clock | None = None,
        max_age: timedelta = MAX_MESSAGE_AGE,
        clock_skew: timedelta = CLOCK_SKEW,
    ) -> None:
        self._fetcher = fetcher
        self._cert_urls = re.compile(cert_url_pattern)
        self._clock = clock or SystemClock()
        self._max_age = max_age
        self._clock_skew = clock_skew

    async def verify(self, message: SnsMessage) -> None:
        """Return when ``message`` is authentic and fresh; raise :class:`SnsVerificationError`."""
        _require_allowed(self._cert_urls, message.signing_cert_url, "SigningCertURL")
        self._require_fresh(message)
        signature = _decoded(message.signature)
        certificate = await self._fetcher.certificate(message.signing_cert_url)
        self._require_current(certificate)
        _require_signed(certificate, signature, message)

    def _require_fresh(self, message: SnsMessage) -> None:
        age = self._clock.now() - message.published_at
        if age > self._max_age:
            raise StaleMessage(
                f"{_described(message)} was published at {message.timestamp[:40]}, "
                f"over {self._max_age} ago"
            )
        if age < -self._clock_skew:
            raise StaleMessage(
                f"{_described(message)} claims to be published in the future "
                f"({message.timestamp[:40]})"
            )

    def _require_current(self, certificate: x509.Certificate) -> None:
        now = self._clock.now()
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            raise BadSignature("the signing certificate is not valid at this time")


def string_to_sign(message: SnsMessage) -> bytes:
    """The canonical text SNS signs: ``"Name\\nvalue\\n"`` for specific fields, sorted by name."""
    pairs: list[tuple[str, str]] = [("Message", message.message), ("MessageId", message.message_id)]
    if isinstance(message, SnsNotification):
        if message.subject is not None:
            pairs.append(("Subject", message.subject))
        pairs += [("Timestamp", message.timestamp), ("TopicArn", message.topic_arn)]
    else:
        pairs += [
            ("SubscribeURL", message.subscribe_url),
            ("Timestamp", message.timestamp),
            ("Token", message.token),
            ("TopicArn", message.topic_arn),
        ]
    pairs.append(("Type", message.type))
    return "".join(f"{name}\n{value}\n" for name, value in pairs).encode()


def require_known_topic(message: SnsMessage, topic_arns: Collection[str]) -> None:
    """Refuse a message from a topic not in ``topic_arns`` (an empty list allows any topic)."""
    if topic_arns and message.topic_arn not in topic_arns:
        raise UnknownTopic(
            f"topic {message.topic_arn[:256]!r} is not one Clarion is configured to hear"
        )


async def confirm_subscription(
    client: httpx.AsyncClient,
    message: SnsSubscriptionConfirmation,
    url_pattern: str,
) -> None:
    """Confirm the subscription by visiting ``SubscribeURL``, if it matches ``url_pattern``.

    Call it after :meth:`SnsVerifier.verify`. Raises :class:`UntrustedUrl` (nothing
    fetched) or :class:`SubscriptionNotConfirmed` when AWS does not answer 2xx.
    """
    _require_allowed(re.compile(url_pattern), message.subscribe_url, "SubscribeURL")
    try:
        response = await client.get(
            message.subscribe_url, timeout=FETCH_TIMEOUT_SECONDS, follow_redirects=False
        )
    except httpx.InvalidURL as exc:
        raise UntrustedUrl(f"SubscribeURL {_shown(message.subscribe_url)} is not valid") from exc
    except httpx.HTTPError as exc:
        raise SubscriptionNotConfirmed(
            f"could not reach {_shown(message.subscribe_url)}: {type(exc).__name__}"
        ) from exc
    if not response.is_success:
        raise SubscriptionNotConfirmed(
            f"{_shown(message.subscribe_url)} answered HTTP {response.status_code} "
            f"to the confirmation of {message.topic_arn}"
        )


def _require_allowed(pattern: re.Pattern[str], url: str, field: str) -> None:
    if pattern.match(url) is None:
        raise UntrustedUrl(f"{field} {_shown(url)} is not an allowed AWS SNS address")


def _described(message: SnsMessage) -> str:
    """Names the message in errors; its id is the sender's text, so it is bounded."""
    return f"the {message.type} message {message.message_id[:80]!r}"


def _shown(url: str) -> str:
    """The URL without its query (a SubscribeURL's query holds the token), bounded."""
    return repr(url.partition("?")[0][:120])


def _decoded(signature: str) -> bytes:
    try:
        return base64.b64decode(signature, validate=True)
    except ValueError:  # binascii.Error, or text that is not ASCII
        raise BadSignature("Signature is not valid base64") from None


def _require_signed(certificate: x509.Certificate, signature: bytes, message: SnsMessage) -> None:
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise BadSignature("the signing certificate does not hold an RSA key")
    # SignatureVersion 1 is SHA1withRSA by AWS's definition; 2 is SHA256withRSA.
    algorithm = hashes.SHA1() if message.signature_version == "1" else hashes.SHA256()  # noqa: S303
    try:
        key.verify(signature, string_to_sign(message), padding.PKCS1v15(), algorithm)
    except InvalidSignature:
        raise BadSignature(
            f"{_described(message)} does not match its signature "
            f"(SignatureVersion {message.signature_version})"
        ) from None
