"""Who may send alerts: per-source credentials and the check of one inbound request.

Each source accepts ``CLARION_INGEST_TOKEN`` as a bearer token, plus its own
credentials: a bearer token, HTTP basic auth, a Grafana HMAC signature, a
Standard Webhooks signature, or (PagerDuty) a routing key in the body. Any one
valid credential is enough. With nothing configured for any source, only
loopback clients are served.

Answers: 401 (:class:`Unauthorized`) when credentials are missing or wrong, since
other credentials could work; 403 (:class:`Forbidden`) when no credentials can
help: a remote client while ingest is loopback-only, or a source that has no
credentials while others do.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property, lru_cache
from typing import Final, Literal

import structlog
from pydantic import SecretBytes, SecretStr
from starlette.requests import Request

from services.ingest import signatures
from shared.auth import is_loopback, parse_authorization, secret_equals
from shared.errors import Forbidden, Unauthorized
from shared.plan import Plan
from shared.secret_values import configured_secrets, ordered
from shared.settings import Settings

SOURCES: Final = ("alertmanager", "grafana", "datadog", "generic", "sns", "pagerduty")

# What each source may configure besides CLARION_INGEST_TOKEN (Settings field suffixes).
_OWN_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "alertmanager": ("token", "basic_auth"),
    "grafana": ("token", "basic_auth", "hmac_secret"),
    "datadog": ("token", "basic_auth"),
    "generic": ("token", "basic_auth", "webhook_secret"),
    "sns": ("basic_auth",),
    "pagerduty": ("routing_keys",),
}

CHALLENGES: Final = ("Bearer", 'Basic realm="clarion", charset="UTF-8"')


@dataclass(frozen=True)
class SourceCredentials:
    """What one source accepts. Built by :func:`credentials_for`."""

    source: str
    tokens: tuple[SecretStr, ...] = ()
    basic: tuple[SecretStr, ...] = ()  # each "user:password"
    grafana_hmac_secret: SecretStr | None = None
    webhook_key: SecretBytes | None = None  # decoded from a whsec_ secret
    routing_keys: tuple[SecretStr, ...] = ()
    loopback_only: bool = False  # nothing is configured for any source

    @property
    def configured(self) -> bool:
        return bool(
            self.tokens
            or self.basic
            or self.grafana_hmac_secret
            or self.webhook_key
            or self.routing_keys
        )


@dataclass(frozen=True)
class InboundRequest:
    """The parts of a request that authentication looks at. Header names are lowercased."""

    headers: Mapping[str, str]
    body: bytes
    client: str | None

    @cached_property
    def _lowered(self) -> dict[str, str]:
        """The headers by lowercased name (the first of repeated ones), built when first read:
        a loopback-only ingest reads none."""
        lowered: dict[str, str] = {}
        for name, value in self.headers.items():
            lowered.setdefault(name.lower(), value)
        return lowered

    def header(self, name: str) -> str | None:
        return self._lowered.get(name.lower())

    @classmethod
    def from_request(cls, request: Request, body: bytes) -> InboundRequest:
        client = request.client.host if request.client else None
        return cls(headers=request.headers, body=body, client=client)


def credentials_for(settings: Settings, source: str) -> SourceCredentials:
    """The credentials ``source`` accepts. Raises ValueError for a malformed setting."""
    if source not in _OWN_FIELDS:
        raise ValueError(f"unknown ingest source {source!r}; expected one of {SOURCES}")
    own = {name: getattr(settings, f"{source}_{name}", None) for name in _OWN_FIELDS[source]}
    basic = _secret(own.get("basic_auth"))
    if basic is not None and ":" not in basic.get_secret_value():
        raise ValueError(f"{_env(source, 'basic_auth')} must be 'user:password'")
    whsec = _secret(own.get("webhook_secret"))
    try:
        key = (
            None if whsec is None else SecretBytes(signatures.webhook_key(whsec.get_secret_value()))
        )
    except ValueError as exc:
        raise ValueError(f"{_env(source, 'webhook_secret')}: {exc}") from exc
    keys = _routing_keys(settings) if source == "pagerduty" else ()
    return SourceCredentials(
        source=source,
        tokens=tuple(t for t in (_secret(settings.ingest_token), _secret(own.get("token"))) if t),
        basic=(basic,) if basic else (),
        grafana_hmac_secret=_secret(own.get("hmac_secret")),
        webhook_key=key,
        routing_keys=keys,
        loopback_only=not any_credentials(settings),
    )


def all_credentials(settings: Settings) -> dict[str, SourceCredentials]:
    """Every source's credentials: call at startup so a bad setting fails early."""
    return {source: credentials_for(settings, source) for source in SOURCES}


def any_credentials(settings: Settings) -> bool:
    """Whether any ingest credential is configured, for any source."""
    if _secret(settings.ingest_token) or settings.pagerduty_routing_keys:
        return True
    return any(
        _secret(getattr(settings, f"{source}_{name}", None))
        for source, names in _OWN_FIELDS.items()
        for name in names
        if name != "routing_keys"
    )


def known_secrets(
    settings: Settings, plan: Plan | None = None, environ: Mapping[str, str] | None = None
) -> tuple[str, ...]:
    """Every secret value this installation is configured with (ingest's credentials, every
    secret setting, the plan's ``*_env`` variables), for scrubbing from stored samples."""
    values = list(configured_secrets(settings, plan, environ))
    for creds in all_credentials(settings).values():
        values += [s.get_secret_value() for s in (*creds.tokens, *creds.routing_keys)]
        values += [s.get_secret_value() for s in creds.basic]
        values += [s.get_secret_value().partition(":")[2] for s in creds.basic]  # password
        if creds.grafana_hmac_secret:
            values.append(creds.grafana_hmac_secret.get_secret_value())
    for whsec in _secrets_of(settings, "webhook_secret"):
        values += [whsec.get_secret_value(), whsec.get_secret_value().removeprefix("whsec_")]
    return ordered(values)  # longest first: a secret containing another is scrubbed whole


def authenticate(
    source: str,
    creds: SourceCredentials,
    request: InboundRequest,
    now: datetime,
    *,
    routing_key: str | None = None,
) -> str:
    """The scheme that let ``request`` in, or :class:`Unauthorized`/:class:`Forbidden`.

    Schemes: ``loopback``, ``bearer``, ``basic``, ``grafana-hmac``,
    ``standard-webhooks``, ``routing-key`` (PagerDuty: pass the body's key).
    A valid credential wins even if another one presented is wrong.
    """
    if creds.loopback_only:
        if _is_loopback(request.client):
            return "loopback"
        raise Forbidden(
            "ingest has no credentials configured and accepts requests only from its own host"
        )
    if not creds.configured:
        raise Forbidden(f"no credentials are configured for the {source} source")
    failures: list[str] = []
    for scheme, check in (
        ("bearer", _check_bearer),
        ("basic", _check_basic),
        ("grafana-hmac", _check_grafana),
        ("standard-webhooks", _check_standard_webhooks),
    ):
        verdict = check(creds, request, now)
        if verdict is True:
            return scheme
        if verdict is not None:
            failures.append(verdict)
    if routing_key is not None and creds.routing_keys:
        if _matches_any(routing_key.encode(), creds.routing_keys):
            return "routing-key"
        failures.append("the routing key is not configured")
    if failures:
        raise Unauthorized("; ".join(failures), challenges=CHALLENGES)
    raise Unauthorized(
        "credentials are required: an Authorization header (Bearer/Basic) or a signature",
        challenges=CHALLENGES,
    )


def auth_warnings(settings: Settings) -> list[str]:
    """What an operator should know about ingest authentication, one line each."""
    if not any_credentials(settings):
        return [
            "no ingest credentials are configured (CLARION_INGEST_TOKEN or per-source): "
            "only requests from this host (127.0.0.0/8, ::1) are accepted, others get 403"
        ]
    creds = all_credentials(settings)
    return [
        f"the {source} source has no credentials and refuses every request (403); set "
        + " or ".join(_env(source, name) for name in _OWN_FIELDS[source])
        for source in SOURCES
        if not creds[source].configured
    ]


def log_auth_posture(settings: Settings, log: structlog.stdlib.BoundLogger) -> None:
    """Log :func:`auth_warnings` at startup, as warnings."""
    for warning in auth_warnings(settings):
        log.warning("ingest.auth_posture", detail=warning)


# A check answers True (accepted), why not (presented but wrong) or None (not presented).
Verdict = Literal[True] | str | None


def _check_bearer(creds: SourceCredentials, request: InboundRequest, _: datetime) -> Verdict:
    scheme, presented = parse_authorization(request.header("authorization"))
    if scheme != "bearer":
        return None
    return True if _matches_any(presented.encode(), creds.tokens) else "wrong token (Bearer)"


def _check_basic(creds: SourceCredentials, request: InboundRequest, _: datetime) -> Verdict:
    scheme, presented = parse_authorization(request.header("authorization"))
    if scheme != "basic":
        return None
    try:
        decoded = base64.b64decode(presented, validate=True)
    except (binascii.Error, ValueError):
        return "malformed credentials (Basic)"
    return True if _matches_any(decoded, creds.basic) else "wrong user or password (Basic)"


def _check_grafana(creds: SourceCredentials, request: InboundRequest, now: datetime) -> Verdict:
    signature = _first_header(request, signatures.GRAFANA_SIGNATURE_HEADERS)
    if creds.grafana_hmac_secret is None or signature is None:
        return None
    timestamp = _first_header(request, signatures.GRAFANA_TIMESTAMP_HEADERS)
    secret = creds.grafana_hmac_secret.get_secret_value().encode()
    try:
        signatures.verify_grafana(secret, request.body, signature, timestamp, now)
    except signatures.InvalidSignature as exc:
        return str(exc)
    return True


def _check_standard_webhooks(
    creds: SourceCredentials, request: InboundRequest, now: datetime
) -> Verdict:
    presented = request.header(signatures.WEBHOOK_SIGNATURE)
    if creds.webhook_key is None or presented is None:
        return None
    try:
        signatures.verify_standard_webhook(
            creds.webhook_key.get_secret_value(),
            request.header(signatures.WEBHOOK_ID),
            request.header(signatures.WEBHOOK_TIMESTAMP),
            presented,
            body=request.body,
            now=now,
        )
    except signatures.InvalidSignature as exc:
        return str(exc)
    return True


def _matches_any(presented: bytes, secrets: Iterable[SecretStr]) -> bool:
    # Compare against every secret, so timing does not tell which one (if any) matched.
    results = [secret_equals(presented, s.get_secret_value()) for s in secrets]
    return any(results)


def _first_header(request: InboundRequest, names: Iterable[str]) -> str | None:
    return next((v for v in map(request.header, names) if v is not None), None)


def _routing_keys(settings: Settings) -> tuple[SecretStr, ...]:
    keys = tuple(SecretStr(k) for k in settings.pagerduty_routing_keys if k)
    token = _secret(settings.ingest_token)
    return (*keys, token) if token else keys


def _secrets_of(settings: Settings, name: str) -> list[SecretStr]:
    found = (_secret(getattr(settings, f"{source}_{name}", None)) for source in SOURCES)
    return [s for s in found if s is not None]


@lru_cache(maxsize=256)
def _is_loopback(client: str | None) -> bool:
    """:func:`is_loopback`, remembered for the last few senders (parsing an address
    costs more than the rest of a loopback check)."""
    return is_loopback(client)


def _secret(value: object) -> SecretStr | None:
    return value if isinstance(value, SecretStr) and value.get_secret_value() else None


def _env(source: str, name: str) -> str:
    return f"CLARION_{source}_{name}".upper()
