"""Webhook signature schemes: Grafana's HMAC header and Standard Webhooks.

Pure functions: the caller passes header values, the raw body and the time.
Failures raise :class:`InvalidSignature` with a message that is safe to show.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from datetime import datetime, timedelta
from typing import Final

from shared.auth import secret_equals

# How far a signed timestamp may be from our clock, either way (stops replays).
TOLERANCE: Final = timedelta(minutes=5)

# Grafana's documented default header, then the default of its signing library.
GRAFANA_SIGNATURE_HEADERS: Final = ("x-grafana-alerting-signature", "x-grafana-alert-signature")
# Grafana has no default timestamp header: these are the names its docs use as examples.
GRAFANA_TIMESTAMP_HEADERS: Final = (
    "x-grafana-alerting-signature-timestamp",
    "x-grafana-alerting-timestamp",
)

WEBHOOK_ID: Final = "webhook-id"
WEBHOOK_TIMESTAMP: Final = "webhook-timestamp"
WEBHOOK_SIGNATURE: Final = "webhook-signature"
WHSEC_PREFIX: Final = "whsec_"
MIN_WEBHOOK_KEY_BYTES: Final = 24  # the Standard Webhooks minimum

_UNIX_SECONDS = re.compile(r"[0-9]{1,12}")


class InvalidSignature(Exception):
    """A signature (or its timestamp) that does not verify."""


def check_timestamp(value: str, now: datetime) -> None:
    """Refuse a signed Unix timestamp more than :data:`TOLERANCE` away from ``now``."""
    if not _UNIX_SECONDS.fullmatch(value.strip()):
        raise InvalidSignature("the signature timestamp is not a Unix time in seconds")
    skew = abs(int(value) - now.timestamp())
    allowed = TOLERANCE.total_seconds()
    if skew > allowed:
        raise InvalidSignature(
            f"the signature timestamp is {int(skew)} s away from the server clock "
            f"(allowed: {int(allowed)} s either way)"
        )


def grafana_signature(secret: bytes, body: bytes, timestamp: str | None = None) -> str:
    """Grafana's signature: hex HMAC-SHA256 of the body, or of ``timestamp:body``."""
    message = body if timestamp is None else timestamp.encode() + b":" + body
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def verify_grafana(
    secret: bytes, body: bytes, signature: str, timestamp: str | None, now: datetime
) -> None:
    """Check an ``X-Grafana-Alerting-Signature`` (and its timestamp header, if sent)."""
    if timestamp is not None:
        check_timestamp(timestamp, now)
    expected = grafana_signature(secret, body, timestamp)
    if not secret_equals(signature.strip().lower(), expected):
        raise InvalidSignature("the Grafana signature does not match the body")


def webhook_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret, ``whsec_<base64>`` (prefix optional)."""
    encoded = secret.strip().removeprefix(WHSEC_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a Standard Webhooks secret is 'whsec_' followed by base64") from exc
    if len(key) < MIN_WEBHOOK_KEY_BYTES:
        raise ValueError(
            f"a Standard Webhooks secret must hold at least {MIN_WEBHOOK_KEY_BYTES} bytes"
        )
    return key


def standard_webhook_signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    """One ``webhook-signature`` entry: ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``."""
    digest = _standard_digest(key, msg_id, timestamp, body)
    return "v1," + base64.b64encode(digest).decode()


def verify_standard_webhook(
    key: bytes,
    msg_id: str | None,
    timestamp: str | None,
    signatures: str | None,
    *,
    body: bytes,
    now: datetime,
) -> None:
    """Check the Standard Webhooks headers: any ``v1`` entry of the list may match."""
    if not (msg_id and timestamp and signatures):
        raise InvalidSignature(
            "Standard Webhooks needs all of webhook-id, webhook-timestamp and webhook-signature"
        )
    check_timestamp(timestamp, now)
    expected = _standard_digest(key, msg_id, timestamp.strip(), body)
    matched = False
    for entry in signatures.split():
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue  # v1a (asymmetric) and unknown versions are not ours to check
        try:
            presented = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        matched |= hmac.compare_digest(presented, expected)
    if not matched:
        raise InvalidSignature("no v1 entry of webhook-signature matches the body")


def _standard_digest(key: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return hmac.new(key, signed, hashlib.sha256).digest()
