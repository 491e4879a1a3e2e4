"""Masking of secrets and personal data (email addresses, phone numbers).

Used by the log processor and by the delivery log, so that neither ever holds
a full address or number.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

REDACTED: Final = "[REDACTED]"

SECRET_KEY_PARTS: Final = (
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "api_key",
    "apikey",
    "credential",
    "signature",
    "cookie",
    "private_key",
    "routing_key",
    "service_key",
    "integration_key",
)

_EMAIL = re.compile(r"(?P<local>[A-Za-z0-9._%+-]+)@(?P<domain>[A-Za-z0-9.-]+\.[A-Za-z]{2,})")
# International or national numbers with at least 8 digits, with optional
# separators; dates (2026-11-23) and times don't match because of the length rule.
_PHONE = re.compile(r"(?<![\w.])\+?\(?\d(?:[\s().-]{0,2}\d){7,14}(?![\w.])")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/\s:@]*:[^/\s@]*@")


def mask_email(address: str) -> str:
    """``alice@example.com`` -> ``a***@example.com``: enough to tell recipients apart."""
    local, _, domain = address.partition("@")
    if not domain:
        return REDACTED
    return f"{local[:1]}***@{domain}"


def mask_phone(number: str) -> str:
    """``+15551234567`` -> ``+*******4567``."""
    digits = [c for c in number if c.isdigit()]
    tail = "".join(digits[-4:])
    return f"{'+' if number.strip().startswith('+') else ''}{'*' * max(len(digits) - 4, 0)}{tail}"


def mask_recipient(recipient: str) -> str:
    """Mask an email address or phone number; leave channel names (``status-page``) alone."""
    if "@" in recipient:
        return mask_email(recipient)
    if _PHONE.fullmatch(recipient.strip()):
        return mask_phone(recipient)
    return recipient


def redact_text(text: str) -> str:
    """Mask every email address, phone number, bearer token and URL password in ``text``."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _EMAIL.sub(lambda m: mask_email(m.group(0)), text)
    return _PHONE.sub(lambda m: mask_phone(m.group(0)), text)


def is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(part in lowered for part in SECRET_KEY_PARTS)


def redact_value(value: Any) -> Any:
    """Redact recursively: secret-named keys lose their values, strings are masked."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if isinstance(k, str) and is_secret_key(k) else redact_value(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    return value
