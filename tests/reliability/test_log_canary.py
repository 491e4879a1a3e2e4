"""Scenario: canary secrets and personal data never reach a log line or an ops answer.

The three services run as processes with JSON logs in files. Canaries (the ops token,
the ingest token, the SMTP password, Twilio's auth token, a Mastodon token, the secret
paths of Slack and chat webhook URLs, a Standard Webhooks secret, a PagerDuty routing
key, an email address and a phone number) are pushed through every path: webhook bodies
of each source (labels, annotations, custom details), requests refused for a wrong
token and for a bad body, an operator update, deliveries on every channel (to a real
SMTP server with AUTH, to fake providers that echo what they got in their errors, to the
outbox), a delivery that dies, and a poison message that is dead-lettered. Then every
log file is searched, as are the answers of ``/v1/rejections``, ``/v1/deliveries`` and
``/v1/dead-letters``.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import structlog
import yaml
from redis.asyncio import Redis

from services.ingest.app import create_app
from shared.logs import redact_processor
from shared.redis_values import DATA_FIELD
from shared.settings import Settings
from shared.streams import DEAD_LETTERS, DELIVERY_LOG, UPDATES_DUE
from tests.conftest import load_fixture
from tests.reliability.hostile import Tally
from tests.reliability.scale import Outcome, report
from tests.support.asgi import running
from tests.support.fake_provider import FakeProvider
from tests.support.ingest_requests import body_of, sns_time
from tests.support.plans import plan_data
from tests.support.processes import System
from tests.support.signing_certs import FakeSnsHost, serving_fake_sns_host, signing_identity
from tests.support.smtp import SmtpServer
from tests.support.streams import stream_json
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

OPS_TOKEN: Final = "opsCANARY7f3a9e1b"
INGEST_TOKEN: Final = "ingCANARY5b2d8c4e"
SMTP_PASSWORD: Final = "smtpCANARY9e4f1a2c"
TWILIO_TOKEN: Final = "twiCANARY3a8e6d0f"
MASTODON_TOKEN: Final = "mastoCANARY1c9b7e4"
SLACK_PATH: Final = "T0CANARY/B0CANARY/slackCANARY8d2f"
CHAT_PATH: Final = "chatCANARY4e7a1b9d"
ROUTING_KEY: Final = "pdCANARY6b1e9f3a2c4d"
WEBHOOK_KEY: Final = b"whsec-CANARY-key-of-32-bytes-00"
WEBHOOK_SECRET: Final = "whsec_" + base64.b64encode(WEBHOOK_KEY).decode()
EMAIL: Final = "canary.person@example.com"
PHONE: Final = "+447700900123"
SNS_TOPIC: Final = "arn:aws:sns:eu-west-1:123456789012:canary"

SECRETS: Final = (
    OPS_TOKEN,
    INGEST_TOKEN,
    SMTP_PASSWORD,
    TWILIO_TOKEN,
    MASTODON_TOKEN,
    "slackCANARY8d2f",
    CHAT_PATH,
    ROUTING_KEY,
    WEBHOOK_SECRET.removeprefix("whsec_"),
)
PERSONAL: Final = (EMAIL, "canary.person", PHONE, "7700900123", "7700 900123")
CANARIES: Final = (*SECRETS, *PERSONAL)
LEAKY_TEXT: Final = (
    f"Page {EMAIL} or call {PHONE} (+44 7700 900123); pasted by mistake: {OPS_TOKEN} "
    f"{INGEST_TOKEN} {SMTP_PASSWORD} {TWILIO_TOKEN} {MASTODON_TOKEN} {CHAT_PATH} {ROUTING_KEY}"
)
AUTH: Final = {"Authorization": f"Bearer {INGEST_TOKEN}"}
OPS: Final = {"Authorization": f"Bearer {OPS_TOKEN}"}


@dataclass(frozen=True)
class Outside:
    """Everything outside Clarion: SMTP, the providers, a fake AWS host."""

    smtp: SmtpServer
    providers: FakeProvider
    sns: FakeSnsHost
    sns_key: Any


@contextmanager
def running_outside() -> Iterator[Outside]:
    smtp = SmtpServer(tls="starttls", credentials=("clarion", SMTP_PASSWORD))
    smtp.start()
    identity = signing_identity(datetime.now(UTC))
    try:
        with FakeProvider() as providers, serving_fake_sns_host(identity) as sns:
            echo_errors(providers)
            yield Outside(smtp, providers, sns, identity)
    finally:
        smtp.stop()


def echo_errors(providers: FakeProvider) -> None:
    """Providers that answer with errors quoting what they were sent, as real ones do."""
    providers.answer(
        "POST",
        "/2010-04-01/Accounts/ACcanary/Messages.json",
        400,
        json={"code": 21211, "message": f"The 'To' number {PHONE} is not valid", "status": 400},
    )
    providers.answer(
        "POST", "/api/v1/statuses", 401, json={"error": f"token {MASTODON_TOKEN} is invalid"}
    )
    providers.answer("POST", f"/slack/{SLACK_PATH}", 503, body=f"busy at /slack/{SLACK_PATH}")
    providers.answer("POST", f"/chat/{CHAT_PATH}", 404, body=f"no hook /chat/{CHAT_PATH}")
    providers.answer("POST", "/partner", 200)


def canary_plan(directory: Path, providers: str) -> Path:
    audiences = {
        "customers": {
            "public": True,
            "status_page": True,
            "email": [EMAIL],
            "sms": [PHONE],
            "mastodon": [{"instance": providers, "access_token_env": "CANARY_MASTODON_TOKEN"}],
            "bluesky": [{"handle": "status.example.com", "app_password_env": "CANARY_BLUESKY"}],
        },
        "engineering": {
            "email": ["eng@example.com"],
            "slack": [{"name": "#incidents", "url_env": "CANARY_SLACK_URL"}],
            "chat_webhook": [{"name": "bot", "url_env": "CANARY_CHAT_URL"}],
            "webhook": [
                {
                    "name": "partner",
                    "url": f"{providers}/partner",
                    "secret_env": "CANARY_WEBHOOK_SECRET",
                }
            ],
        },
    }
    data = plan_data(
        audiences=audiences, routes=[{"name": "all", "audiences": ["customers", "engineering"]}]
    )
    path = directory / "plan.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def canary_env(outside: Outside, redis_url: str, plan: Path, cert: Path) -> dict[str, str]:
    providers = outside.providers.url
    return {
        "CLARION_REDIS_URL": redis_url,
        "CLARION_PLAN": str(plan),
        "CLARION_LOG_LEVEL": "DEBUG",
        "CLARION_INGEST_TOKEN": INGEST_TOKEN,
        "CLARION_OPS_TOKEN": OPS_TOKEN,
        "CLARION_PAGERDUTY_ROUTING_KEYS": ROUTING_KEY,
        "CLARION_GENERIC_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "CLARION_SNS_CERT_URL_PATTERN": outside.sns.url_pattern,
        "CLARION_SNS_TOPIC_ARNS": SNS_TOPIC,
        "CLARION_SMTP_HOST": outside.smtp.host,
        "CLARION_SMTP_PORT": str(outside.smtp.port),
        "CLARION_SMTP_STARTTLS": "true",
        "CLARION_SMTP_USERNAME": "clarion",
        "CLARION_SMTP_PASSWORD": SMTP_PASSWORD,
        "SSL_CERT_FILE": str(cert),  # the SMTP server's self-signed certificate
        "CLARION_TWILIO_ACCOUNT_SID": "ACcanary",
        "CLARION_TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "CLARION_TWILIO_FROM": "+15005550006",
        "CLARION_TWILIO_API_URL": providers,
        "CLARION_WEBHOOK_ALLOW_PRIVATE": "true",
        "CLARION_DELIVERY_MAX_ATTEMPTS": "1",  # a retryable failure dies at once
        "CLARION_RATE_LIMITS": "",
        "CLARION_MAX_DELIVERIES": "2",
        "CLARION_RECLAIM_IDLE_MS": "300",
        "CLARION_POLLING_INTERVAL_MS": "100",
        "CLARION_SCHEDULER_TICK_MS": "100",
        "CANARY_MASTODON_TOKEN": MASTODON_TOKEN,
        "CANARY_SLACK_URL": f"{providers}/slack/{SLACK_PATH}",
        "CANARY_CHAT_URL": f"{providers}/chat/{CHAT_PATH}",
        "CANARY_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }


Request = tuple[str, bytes, dict[str, str]]


def leaky_bodies(sns: FakeSnsHost, identity: Any) -> dict[str, Request]:
    """A body per source with the canaries in its labels, annotations and details."""
    notification = {
        "Type": "Notification",
        "MessageId": "canary-1",
        "TopicArn": SNS_TOPIC,
        "Subject": f"ALARM for {EMAIL}",
        "Message": LEAKY_TEXT,
        "Timestamp": sns_time(datetime.now(UTC) - timedelta(seconds=5)),
        "SigningCertURL": sns.url("/cert.pem"),
    }
    sns_headers = {"Content-Type": "text/plain", "x-amz-sns-message-type": "Notification"}
    return {
        **leaky_bodies_without_sns(),
        "sns": ("/v1/alerts/sns", body_of(identity.signed(notification)), sns_headers),
    }


def leaky_bodies_without_sns() -> dict[str, Request]:
    """The canaries in the labels, annotations and details of every source but SNS."""
    alertmanager = load_fixture("alertmanager_webhook_v4_firing_single.json")
    alertmanager["alerts"][0]["labels"]["owner"] = EMAIL
    alertmanager["alerts"][0]["annotations"]["description"] = LEAKY_TEXT
    grafana = load_fixture("grafana_webhook_v1_firing.json")
    grafana["alerts"][0]["annotations"]["summary"] = LEAKY_TEXT
    grafana["commonLabels"]["oncall"] = PHONE
    generic = load_fixture("generic_alert_v1_firing.json")
    generic["alerts"][0]["labels"]["owner"] = EMAIL
    generic["alerts"][0]["impact"] = LEAKY_TEXT[:900]
    pagerduty = load_fixture("pagerduty_events_v2_trigger_devdocs.json")
    pagerduty["routing_key"] = ROUTING_KEY
    pagerduty["payload"]["custom_details"] = {"contact": LEAKY_TEXT, "phone": PHONE}
    datadog = {
        "id": "1",
        "title": f"[P1] [Triggered] Checkout down, ask {EMAIL}",
        "body": LEAKY_TEXT,
        "tags": f"owner:{EMAIL}",
        "alert_transition": "Triggered",
    }
    json_headers = {**AUTH, "Content-Type": "application/json"}
    return {
        "alertmanager": ("/v1/alerts/alertmanager", body_of(alertmanager), json_headers),
        "grafana": ("/v1/alerts/grafana", body_of(grafana), json_headers),
        "generic": ("/v1/alerts/generic", body_of(generic), json_headers),
        "pagerduty": ("/v2/enqueue", body_of(pagerduty), {"Content-Type": "application/json"}),
        "datadog": ("/v1/alerts/datadog", body_of(datadog), json_headers),
    }


def refused_bodies() -> list[Request]:
    """Requests ingest refuses, each carrying canaries where a rejection record looks."""
    leaky = body_of({"version": "4", "note": LEAKY_TEXT, "password": SMTP_PASSWORD})
    label_keys = load_fixture("alertmanager_webhook_v4_firing_single.json")
    label_keys["commonLabels"] = {OPS_TOKEN: 1, EMAIL: 2}  # field names echo keys
    return [
        ("/v1/alerts/alertmanager", leaky, {"Authorization": f"Bearer {OPS_TOKEN}"}),
        ("/v1/alerts/alertmanager", leaky, AUTH),
        ("/v1/alerts/alertmanager", body_of(label_keys), AUTH),
        ("/v1/alerts/grafana", LEAKY_TEXT.encode(), AUTH),
        ("/v2/enqueue", body_of({"routing_key": OPS_TOKEN, "event_action": "trigger"}), {}),
    ]


def found_in(text: str) -> list[str]:
    return [canary for canary in CANARIES if canary in text]


def log_lines(directory: Path) -> list[dict[str, Any]]:
    """Every JSON log line of every service, with the file it came from."""
    lines: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.log")):
        for text in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                line = json.loads(text)
            except ValueError:
                line = {"event": text}  # not JSON: kept whole, it is searched all the same
            if not isinstance(line, dict):
                line = {"event": text}
            lines.append({**line, "_file": path.name, "_text": text})
    return lines


async def final_deliveries(redis: Redis) -> list[dict[str, Any]]:
    final = {"sent", "failed", "dead", "suppressed"}
    return [r for r in await stream_json(redis, DELIVERY_LOG) if r["status"] in final]


CHANNELS: Final = frozenset(
    {"email", "sms", "mastodon", "bluesky", "slack", "chat_webhook", "webhook", "status_page"}
)


async def every_channel_ended(redis: Redis) -> bool:
    return {r["channel"] for r in await final_deliveries(redis)} >= CHANNELS


@dataclass(frozen=True)
class CanaryRun:
    """What one run of the canaries through the whole system left behind."""

    lines: list[dict[str, Any]]
    answers: dict[str, str]
    statuses: dict[str, int]
    mails: int
    provider_paths: frozenset[str]


async def push_canaries(system: System, redis: Redis, outside: Outside) -> CanaryRun:
    answers: dict[str, str] = {}
    statuses: dict[str, int] = {}
    async with httpx.AsyncClient(timeout=30.0) as client:
        for source, (path, body, headers) in leaky_bodies(outside.sns, outside.sns_key).items():
            response = await client.post(system.ingest_url + path, content=body, headers=headers)
            statuses[source] = response.status_code
        listed = await client.get(system.ingest_url + "/v1/incidents", headers=OPS)
        incident_id = listed.json()["incidents"][0]["id"]
        for n, (path, body, headers) in enumerate(refused_bodies()):
            response = await client.post(system.ingest_url + path, content=body, headers=headers)
            statuses[f"refused #{n}"] = response.status_code
        update = await client.post(
            f"{system.ingest_url}/v1/incidents/{incident_id}/updates",
            json={"message": LEAKY_TEXT, "author": EMAIL},
            headers=OPS,
        )
        statuses["operator update"] = update.status_code
        # A poison message carrying the canaries: it is dead-lettered, and logged as such.
        await redis.xadd(UPDATES_DUE, {DATA_FIELD: json.dumps({"note": LEAKY_TEXT}).encode()})

        await eventually(lambda: every_channel_ended(redis), within=60.0, what="every channel")
        await eventually(lambda: stream_json(redis, DEAD_LETTERS), within=60.0, what="dead letter")
        for name, url in (
            ("rejections", f"{system.ingest_url}/v1/rejections"),
            ("deliveries", f"{system.dispatcher_url}/v1/deliveries?limit=1000"),
            ("dead letters", f"{system.dispatcher_url}/v1/dead-letters"),
        ):
            answer = await client.get(url, headers=OPS)
            statuses[name] = answer.status_code
            answers[name] = answer.text
    paths = frozenset(r.path for r in outside.providers.received)
    return CanaryRun([], answers, statuses, len(outside.smtp.mailbox.messages), paths)


async def run_system(redis_url: str, directory: Path) -> CanaryRun:
    redis = Redis.from_url(redis_url)
    await redis.flushdb()
    with running_outside() as outside:
        assert outside.smtp.tls is not None
        cert = directory / "smtp-cert.pem"
        cert.write_bytes(outside.smtp.tls.certificate_pem)
        plan = canary_plan(directory, outside.providers.url)
        logs = directory / "logs"
        logs.mkdir()
        system = System(env=canary_env(outside, redis_url, plan, cert), log_dir=logs)
        await asyncio.to_thread(system.start)
        try:
            run = await push_canaries(system, redis, outside)
        finally:
            await asyncio.to_thread(system.stop)  # logs are complete once they have exited
            await redis.aclose()
    return CanaryRun(log_lines(logs), run.answers, run.statuses, run.mails, run.provider_paths)


@pytest.fixture(scope="module")
def canary_run(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> CanaryRun:
    """The whole system run once for the module; each test reads what it left behind."""
    return asyncio.run(run_system(redis_url, tmp_path_factory.mktemp("canary")))


# Leaks this suite found (each has its own test below, marked as a known bug).
def httpx_request_line(line: dict[str, Any]) -> bool:
    return line.get("logger") == "httpx"


def dead_letter_line(line: dict[str, Any]) -> bool:
    return line.get("event") == "message.dead_lettered"


def ingest_rejection_line(line: dict[str, Any]) -> bool:
    return line.get("event") == "ingest.rejected"


KNOWN: Final = (httpx_request_line, dead_letter_line, ingest_rejection_line)


def leaks(lines: list[dict[str, Any]]) -> Tally:
    tally = Tally()
    for line in lines:
        leaked = found_in(line["_text"])
        if leaked:
            tally.bad(f"{line['_file']}: {leaked} in {line['_text'][:200]}")
        else:
            tally.ok()
    return tally


def test_no_canary_reaches_a_log_line(canary_run: CanaryRun) -> None:
    lines = [line for line in canary_run.lines if not any(known(line) for known in KNOWN)]
    outcome = report(
        leaks(lines).outcome(
            "logs: canaries through every path",
            f"{len(canary_run.lines) - len(lines)} lines of known leaky kinds left to the "
            "tests below; answers " + json.dumps(canary_run.statuses),
        )
    )
    statuses = canary_run.statuses
    accepted = ("alertmanager", "grafana", "generic", "pagerduty", "datadog", "sns")
    assert {statuses[s] for s in accepted} == {202}, statuses
    assert statuses["operator update"] == 201
    assert canary_run.mails > 0  # mail went out over SMTP with the password
    assert canary_run.provider_paths >= {  # and every provider was called, with its secret
        "/2010-04-01/Accounts/ACcanary/Messages.json",
        "/api/v1/statuses",
        f"/slack/{SLACK_PATH}",
        f"/chat/{CHAT_PATH}",
        "/partner",
    }
    assert len(lines) > 100  # the services did log (at DEBUG)
    assert outcome.lost == 0, outcome.notes


def answer_leaks(run: CanaryRun, name: str, canaries: tuple[str, ...], what: str) -> Outcome:
    leaked = [canary for canary in canaries if canary in run.answers[name]]
    tally = Tally()
    if leaked:
        tally.bad(f"the {name} answer shows {leaked}")
    else:
        tally.ok()
    return report(tally.outcome(f"logs: {what} in the {name} answer"))


INGEST_CREDENTIALS: Final = (INGEST_TOKEN, ROUTING_KEY, WEBHOOK_SECRET.removeprefix("whsec_"))


def test_the_delivery_log_answer_carries_no_canary(canary_run: CanaryRun) -> None:
    outcome = answer_leaks(canary_run, "deliveries", CANARIES, "canaries")
    assert canary_run.statuses["deliveries"] == 200
    assert '"deliveries"' in canary_run.answers["deliveries"]
    assert outcome.lost == 0, outcome.notes


def test_the_rejections_answer_masks_personal_data_and_ingest_credentials(
    canary_run: CanaryRun,
) -> None:
    outcome = answer_leaks(
        canary_run, "rejections", (*PERSONAL, *INGEST_CREDENTIALS), "personal data, credentials"
    )
    assert canary_run.statuses["rejections"] == 200
    assert canary_run.answers["rejections"].count('"reason"') >= len(refused_bodies())
    assert outcome.lost == 0, outcome.notes


def test_the_rejections_answer_carries_no_configured_secret(canary_run: CanaryRun) -> None:
    outcome = answer_leaks(canary_run, "rejections", SECRETS, "other secrets")
    assert outcome.lost == 0, outcome.notes


def test_the_dead_letters_answer_masks_personal_data_and_secrets(canary_run: CanaryRun) -> None:
    outcome = answer_leaks(canary_run, "dead letters", CANARIES, "canaries")
    assert canary_run.statuses["dead letters"] == 200
    assert outcome.lost == 0, outcome.notes


def test_outbound_request_lines_carry_no_secret_url(canary_run: CanaryRun) -> None:
    lines = [line for line in canary_run.lines if httpx_request_line(line)]
    outcome = report(leaks(lines).outcome("logs: httpx request lines"))
    assert outcome.lost == 0, outcome.notes


def test_dead_letter_lines_carry_no_message_content(canary_run: CanaryRun) -> None:
    lines = [line for line in canary_run.lines if dead_letter_line(line)]
    outcome = report(leaks(lines).outcome("logs: dead letter lines"))
    assert lines
    assert outcome.lost == 0, outcome.notes


def test_rejection_lines_carry_no_configured_secret(canary_run: CanaryRun) -> None:
    lines = [line for line in canary_run.lines if ingest_rejection_line(line)]
    outcome = report(leaks(lines).outcome("logs: ingest rejection lines"))
    assert lines
    assert outcome.lost == 0, outcome.notes


@pytest.mark.integration
async def test_in_process_ingest_logs_no_canary(
    redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    """The same bodies through ingest in this process, its structlog output captured after
    the production redaction processor (what configure_logging installs)."""
    settings = make_settings(
        ingest_token=INGEST_TOKEN,
        ops_token=OPS_TOKEN,
        pagerduty_routing_keys=ROUTING_KEY,
        generic_webhook_secret=WEBHOOK_SECRET,
    )
    requests = [
        (path, body, headers) for path, body, headers in leaky_bodies_without_sns().values()
    ]
    with structlog.testing.capture_logs(processors=[redact_processor]) as captured:
        async with running(create_app(settings), "http://ingest") as client:
            statuses = [
                (await client.post(path, content=body, headers=headers)).status_code
                for path, body, headers in [*requests, *refused_bodies()]
            ]

    lines = [
        {**entry, "_file": "in-process", "_text": json.dumps(entry, default=str)}
        for entry in captured
    ]
    kept = [line for line in lines if not any(known(line) for known in KNOWN)]
    outcome = report(leaks(kept).outcome("logs: canaries through ingest in process"))
    assert statuses[: len(requests)] == [202] * len(requests), statuses
    assert any(line["event"] == "ingest.rejected" for line in lines)
    assert outcome.lost == 0, outcome.notes
