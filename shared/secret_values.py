"""The secret values an installation is configured with, to scrub from what it shows.

Redaction by pattern (``shared.redaction``) catches addresses, phone numbers and
secret-named fields; a secret pasted into an ordinary field is only caught by its value.
These are every secret setting, and the values of the plan's ``*_env`` variables; for a
URL that is itself a secret (a chat webhook), its path too, since that is the secret part.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Final
from urllib.parse import urlsplit

from pydantic import SecretStr

from shared.plan import Plan
from shared.redaction import is_secret_key
from shared.settings import Settings

MIN_PART: Final = 8
"""A URL path segment at least this long is scrubbed on its own."""
SCRUBBED: Final = "[SECRET]"


def configured_secrets(
    settings: Settings, plan: Plan | None = None, environ: Mapping[str, str] | None = None
) -> tuple[str, ...]:
    """Every secret value configured, longest first (a secret holding another goes whole)."""
    values = [
        secret
        for name in type(settings).model_fields
        for secret in _secrets_in(name, getattr(settings, name))
    ]
    if plan is not None:
        env = os.environ if environ is None else environ
        values += [env.get(variable, "") for *_, variable in plan.secret_variables()]
    return ordered(part for value in values for part in secret_parts(value))


def _secrets_in(name: str, value: object) -> list[str]:
    """A setting's secret values: a SecretStr, or the plain values of a secret-named setting
    (``pagerduty_routing_keys``), alone or in a list."""
    items = list(value) if isinstance(value, list | tuple | frozenset | set) else [value]
    named_secret = is_secret_key(name)
    return [
        item.get_secret_value() if isinstance(item, SecretStr) else item
        for item in items
        if isinstance(item, SecretStr) or (named_secret and isinstance(item, str))
    ]


def secret_parts(value: str) -> list[str]:
    """``value``, and for a URL its path, query and long path segments."""
    parts = [value]
    if "://" in value:
        url = urlsplit(value)
        parts += [url.path.strip("/"), url.query]
        parts += [s for s in url.path.split("/") if len(s) >= MIN_PART]
    return parts


def ordered(values: Iterable[str]) -> tuple[str, ...]:
    """Distinct non-empty values, longest first."""
    return tuple(sorted({v for v in values if v}, key=len, reverse=True))


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every one of ``secrets`` (longest first) replaced."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, SCRUBBED)
    return text
