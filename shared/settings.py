"""Configuration, read from ``CLARION_*`` environment variables (and ``.env``).

Every field is documented in ``.env.example``; a test keeps the two in step.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.contracts import Severity

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_duration(value: object) -> object:
    """Accept seconds (``90``), ``"30s"``, ``"30m"``, ``"2h"``, ``"1d"`` or ISO 8601."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text.isdigit():
            return timedelta(seconds=int(text))
        if text[:-1].isdigit() and text[-1:] in _DURATION_UNITS:
            return timedelta(seconds=int(text[:-1]) * _DURATION_UNITS[text[-1]])
        if not text.startswith(("p", "-p")):  # ISO 8601 (P1DT2H) is left to pydantic
            raise ValueError(f"{value!r} is not a duration; write 90s, 30m, 2h or 1d")
    return value


Duration = Annotated[timedelta, BeforeValidator(_parse_duration)]


def _parse_severity(value: object) -> object:
    return Severity.parse(value) if isinstance(value, str) else value


SeverityName = Annotated[Severity, BeforeValidator(_parse_severity)]
"""A severity written as ``SEV1``..``SEV4`` or ``critical``/``error``/``warning``/``info``."""


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


CommaSeparated = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_split_csv)]


DEFAULT_RATE_LIMITS: tuple[str, ...] = (
    "mastodon=300/3 hours",
    "bluesky=1500/hour",
    "x=100/day",
    "sms=30/second",
    "sms:recipient=1/minute",
    "slack:recipient=1/second",
    "discord:recipient=30/minute",
)
"""Provider limits: ``<channel>=<limit>`` per channel, ``<channel>:recipient=<limit>`` per
recipient, shared by every dispatcher instance through Redis."""


def _default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CLARION_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        env_ignore_empty=True,  # CLARION_INGEST_TOKEN= means "unset", not "the empty token"
        frozen=True,
    )

    # Broker and storage
    redis_url: str | None = None
    data_dir: Path = Path(".clarion")

    # Service addresses
    ingest_host: str = "127.0.0.1"
    ingest_port: int = 8000
    dispatcher_host: str = "127.0.0.1"
    dispatcher_port: int = 8001
    scheduler_host: str = "127.0.0.1"
    scheduler_port: int = 8002

    # Worker processes per service, on the service's one port
    ingest_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "Processes serving ingest on its one port (1: a single process). Each worker "
            "is an independent consumer with a consumer name of its own; a worker that "
            "dies is replaced, /metrics shows the sum over the workers, and "
            "CLARION_INGEST_RATE_LIMIT is counted per worker: N workers allow N times "
            "the rate."
        ),
    )
    dispatcher_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "Processes running the dispatcher on its one port (1: a single process). "
            "Each worker is an independent consumer with a consumer name of its own, "
            "sharing deliveries, leases and provider rate limits through Redis; a "
            "worker that dies is replaced, and /metrics shows the sum over the workers."
        ),
    )

    # Security
    ingest_token: SecretStr | None = None
    ops_token: SecretStr | None = None

    # Ingest: per-source credentials (each adds to CLARION_INGEST_TOKEN)
    alertmanager_token: SecretStr | None = None
    alertmanager_basic_auth: SecretStr | None = None
    grafana_token: SecretStr | None = None
    grafana_basic_auth: SecretStr | None = None
    grafana_hmac_secret: SecretStr | None = None
    datadog_token: SecretStr | None = None
    datadog_basic_auth: SecretStr | None = None
    generic_token: SecretStr | None = None
    generic_basic_auth: SecretStr | None = None
    generic_webhook_secret: SecretStr | None = None
    pagerduty_routing_keys: CommaSeparated = ()
    sns_basic_auth: SecretStr | None = None
    sns_topic_arns: CommaSeparated = ()
    sns_cert_url_pattern: str = r"^https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/"
    sns_confirm_subscriptions: bool = True

    # Ingest: limits, grouping, severity
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_alerts_per_request: int = Field(default=1000, ge=1)
    ingest_rate_limit: str = "100/second"
    rejection_sample_size: int = Field(default=100, ge=0)
    group_by: CommaSeparated = ()

    # Communication plan: who hears what, when and where (the shipped default when unset)
    plan: Path | None = None

    # Email
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_tls: bool = False
    smtp_timeout_seconds: float = 30.0
    email_from: str = "Clarion <status@clarion.invalid>"
    email_provider: Literal["smtp", "sendgrid", "mailgun"] = "smtp"
    sendgrid_api_key: SecretStr | None = None
    sendgrid_api_url: str = "https://api.sendgrid.com"
    mailgun_api_key: SecretStr | None = None
    mailgun_domain: str | None = None
    mailgun_api_url: str = "https://api.mailgun.net"
    unsubscribe_secret: SecretStr | None = None

    # SMS
    sms_provider: Literal["twilio", "gateway"] = "twilio"
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_from: str | None = None
    twilio_api_url: str = "https://api.twilio.com"
    sms_gateway_url: str | None = None
    sms_gateway_token: SecretStr | None = None

    # Social (accounts and their token variables are in the plan)
    x_api_url: str = "https://api.x.com"

    # Status page: the built-in page, or a hosted one
    status_page_provider: Literal["builtin", "statuspage", "cachet"] = "builtin"
    statuspage_api_url: str = "https://api.statuspage.io"
    statuspage_api_key: SecretStr | None = None
    statuspage_page_id: str | None = None
    statuspage_components: CommaSeparated = ()
    cachet_url: str | None = None
    cachet_api_token: SecretStr | None = None

    # Outbound webhooks
    webhook_allow_private: bool = False

    # Outbound HTTP (every provider call shares one client)
    http_timeout_seconds: float = Field(default=10.0, gt=0)
    http_connect_timeout_seconds: float = Field(default=5.0, gt=0)

    # Deliveries: attempts, backoff, rate limits, concurrency, retention
    delivery_max_attempts: int = Field(default=6, ge=1, le=50)
    retry_base: Duration = timedelta(seconds=5)
    retry_max: Duration = timedelta(minutes=10)
    retry_after_max: Duration = timedelta(hours=6)
    channel_concurrency: int = Field(default=16, ge=1, le=1000)
    # Jobs a worker takes on per channel: claimed and checked while sends are in flight.
    channel_jobs_in_flight: int = Field(default=64, ge=1, le=10_000)
    rate_limits: CommaSeparated = DEFAULT_RATE_LIMITS
    delivery_log_retention: Duration = timedelta(days=30)
    stream_retention: Duration = timedelta(days=7)
    retention_interval: Duration = timedelta(hours=1)

    # Consumers
    consumer_name: str = Field(default_factory=_default_consumer_name)
    max_records: int = Field(default=20, ge=1, le=1000)
    # A blocking read waits this long: under the Redis socket timeout (5 s), or it would time out.
    polling_interval_ms: int = Field(default=500, ge=10, le=4_000)
    reclaim_idle_ms: int = Field(default=60_000, ge=100)
    max_deliveries: int = Field(default=5, ge=1)
    idempotency_lease_ms: int = Field(default=60_000, ge=100)
    idempotency_retention: Duration = timedelta(days=30)

    # Scheduler
    scheduler_tick_ms: int = Field(default=250, ge=10)
    scheduler_lease_ms: int = Field(default=30_000, ge=100)

    # Logging
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    @property
    def local_status_url(self) -> str:
        """The built-in status page, where the plan names no public one.

        A dispatcher listening on every address (``0.0.0.0``) is reached on loopback.
        """
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}.get(  # noqa: S104
            self.dispatcher_host, self.dispatcher_host
        )
        return f"http://{host}:{self.dispatcher_port}/status"

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise RuntimeError(
                "CLARION_REDIS_URL is not set. Run `clarion up` to start an embedded "
                "Valkey, or point CLARION_REDIS_URL at a Redis server."
            )
        return self.redis_url
